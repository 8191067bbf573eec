// A scripted LLMModel and a small llama2c tokenizer for the runner's unit
// tests: no artifact, no runtime, every call recorded.
#ifndef RUNNER_COMMON_SCRIPTED_MODEL_H_
#define RUNNER_COMMON_SCRIPTED_MODEL_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "runner/common/model.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace testing_util {

// A llama2c tokenizer.bin: <unk> <s> </s>, the 256 byte tokens, then the
// letters a-d. "é" comes out as two byte tokens, so streaming must hold back
// half a character.
inline constexpr int64_t kVocab = 3 + 256 + 4;
inline constexpr int64_t kA = 259, kB = 260, kC = 261, kD = 262;
inline constexpr int64_t Byte(int b) { return 3 + b; }

inline std::string WriteTokenizer() {
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
    md_.vocab_size = vocab_size;
    md_.eos_ids = {2};
    md_.max_prefill_chunk = chunk;
    logits_.resize(vocab_size);
  }
  const ModelMetadata& metadata() const override { return md_; }
  Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    calls.push_back({start_pos, static_cast<int64_t>(tokens.size())});
    const int64_t last = start_pos + static_cast<int64_t>(tokens.size()) - 1;
    std::fill(logits_.begin(), logits_.end(), 0.0f);
    logits_[script_[last % script_.size()]] = 10.0f;
    return static_cast<const float*>(logits_.data());
  }
  // A vision tower whose images are `tokens` soft tokens of id `soft`.
  void set_vision(int64_t tokens, int64_t soft) { md_.vision = {1, tokens, -1, -1, soft}; }
  Result<const float*> ForwardImage(const std::vector<uint8_t>& pixels,
                                    int64_t start_pos) override {
    image_calls.push_back({start_pos, pixels.empty() ? -1 : pixels[0]});
    return Forward(std::vector<int64_t>(md_.vision.image_tokens, md_.vision.image_id), start_pos);
  }
  std::vector<std::pair<int64_t, int64_t>> calls;        // (start_pos, n)
  std::vector<std::pair<int64_t, int64_t>> image_calls;  // (start_pos, first pixel)

 private:
  std::vector<int64_t> script_;
  ModelMetadata md_;
  std::vector<float> logits_;
};

// Loads WriteTokenizer()'s file once per test.
class RunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = tokenizers::LoadTokenizer(WriteTokenizer());
    ASSERT_TRUE(tok.ok()) << tok.error();
    tokenizer_ = std::move(tok).value();
  }
  std::unique_ptr<tokenizers::Tokenizer> tokenizer_;
};

inline SampleFn Greedy() {
  return [](const float* l, int64_t v, const std::vector<int64_t>&) -> Result<int64_t> {
    return ArgMax(l, v);
  };
}

}  // namespace testing_util
}  // namespace torchchat

#endif  // RUNNER_COMMON_SCRIPTED_MODEL_H_
