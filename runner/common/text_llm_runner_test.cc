#include "runner/common/text_llm_runner.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace {

// A llama2c tokenizer.bin: <unk> <s> </s>, the 256 byte tokens, then the
// letters a-d. "é" comes out as two byte tokens, so streaming must hold back
// half a character.
constexpr int64_t kVocab = 3 + 256 + 4;
constexpr int64_t kA = 259, kB = 260, kC = 261, kD = 262;
constexpr int64_t Byte(int b) { return 3 + b; }

std::string WriteTokenizer() {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    pieces.push_back(hex);
  }
  for (const char* p : {"a", "b", "c", "d"}) pieces.push_back(p);
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/tok.bin";
  std::ofstream out(path, std::ios::binary);
  const int32_t max_len = 6;
  out.write(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& p : pieces) {
    const float score = 0.0f;
    const int32_t len = static_cast<int32_t>(p.size());
    out.write(reinterpret_cast<const char*>(&score), 4);
    out.write(reinterpret_cast<const char*>(&len), 4);
    out.write(p.data(), len);
  }
  return path;
}

// Predicts a fixed script: after position p it favours script[p], and records
// every call so the test can check batching and positions.
class ScriptedModel : public LLMModel {
 public:
  ScriptedModel(std::vector<int64_t> script, int64_t max_seq_len, int64_t chunk,
                int64_t vocab_size = kVocab)
      : script_(std::move(script)) {
    md_.max_seq_len = max_seq_len;
    md_.max_context_len = max_seq_len;
    md_.vocab_size = vocab_size;
    md_.bos_id = 1;
    md_.eos_ids = {2};
    md_.max_prefill_chunk = chunk;
    logits_.resize(vocab_size);
  }
  const ModelMetadata& metadata() const override { return md_; }
  Result<const float*> Forward(const std::vector<int64_t>& tokens,
                               int64_t start_pos) override {
    calls.push_back({start_pos, static_cast<int64_t>(tokens.size())});
    const int64_t last = start_pos + static_cast<int64_t>(tokens.size()) - 1;
    std::fill(logits_.begin(), logits_.end(), 0.0f);
    logits_[script_[last % script_.size()]] = 10.0f;
    return static_cast<const float*>(logits_.data());
  }
  std::vector<std::pair<int64_t, int64_t>> calls;  // (start_pos, n)

 private:
  std::vector<int64_t> script_;
  ModelMetadata md_;
  std::vector<float> logits_;
};

class TextLLMRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = tokenizers::LoadTokenizer(WriteTokenizer());
    ASSERT_TRUE(tok.ok()) << tok.error();
    tokenizer_ = std::move(tok).value();
  }
  std::unique_ptr<tokenizers::Tokenizer> tokenizer_;
};

SampleFn Greedy() {
  return [](const float* l, int64_t v, const std::vector<int64_t>&) { return ArgMax(l, v); };
}

TEST_F(TextLLMRunnerTest, PrefillsInOneCallAndStopsAtEos) {
  // Prompt "<s> a b" fills positions 0-2; then the script says c, é, d, </s>.
  ScriptedModel model({0, 0, kC, Byte(0xC3), Byte(0xA9), kD, 2}, 32, 32);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  std::vector<std::string> pieces;
  Stats stats;
  auto ids = runner.Generate("ab", {}, [&](const std::string& s) { pieces.push_back(s); },
                             &stats);
  ASSERT_TRUE(ids.ok()) << ids.error();
  EXPECT_EQ(*ids, (std::vector<int64_t>{kC, Byte(0xC3), Byte(0xA9), kD, 2}));
  // One prefill call of 3 tokens, then one decode call per token but the last.
  ASSERT_GE(model.calls.size(), 1u);
  EXPECT_EQ(model.calls[0], (std::pair<int64_t, int64_t>(0, 3)));
  EXPECT_EQ(model.calls.size(), 1u + 4u);
  // "é" arrives whole, never as half a character.
  EXPECT_EQ(pieces, (std::vector<std::string>{"c", "\xC3\xA9", "d"}));
  EXPECT_EQ(stats.num_prompt_tokens, 3);
  EXPECT_EQ(stats.num_generated_tokens, 5);
}

TEST_F(TextLLMRunnerTest, StaticShapeArtifactsPrefillTokenByToken) {
  ScriptedModel model({kA}, 32, 1);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  GenerationConfig config;
  config.max_new_tokens = 2;
  auto ids = runner.Generate("abcd", config, [](const std::string&) {}, &stats);
  ASSERT_TRUE(ids.ok()) << ids.error();
  EXPECT_EQ(ids->size(), 2u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(model.calls[i].second, 1);
}

TEST_F(TextLLMRunnerTest, PromptLongerThanContextIsAClearError) {
  ScriptedModel model({kA}, 4, 4);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  auto ids = runner.Generate("abcd", {}, [](const std::string&) {}, &stats);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.error(), "the prompt is 5 tokens and 0 are in use, but the model's context holds 4");
  EXPECT_TRUE(model.calls.empty());
}

TEST_F(TextLLMRunnerTest, StopsWhenTheContextIsFull) {
  ScriptedModel model({kA}, 6, 6);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  auto ids = runner.Generate("ab", {}, [](const std::string&) {}, &stats);
  ASSERT_TRUE(ids.ok()) << ids.error();
  // 3 prompt positions + 3 decode positions fill 6; the 4th sample needs none.
  EXPECT_EQ(ids->size(), 4u);
  for (const auto& [pos, n] : model.calls) EXPECT_LT(pos + n - 1, 6);
}

TEST_F(TextLLMRunnerTest, TokenizerLargerThanModelIsRejected) {
  ScriptedModel fits({kA}, 8, 8);
  EXPECT_TRUE(TextLLMRunner(&fits, tokenizer_.get(), Greedy()).Validate().ok());
  ScriptedModel small({kA}, 8, 8, /*vocab_size=*/200);
  auto v = TextLLMRunner(&small, tokenizer_.get(), Greedy()).Validate();
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error(), "the tokenizer has 263 tokens but the model only 200: they do not belong together");
}

}  // namespace
}  // namespace torchchat
