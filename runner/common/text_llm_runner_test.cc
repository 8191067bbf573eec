#include "runner/common/text_llm_runner.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runner/common/scripted_model.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace {

using testing_util::Byte;
using testing_util::kA;
using testing_util::kB;
using testing_util::kC;
using testing_util::kD;
using testing_util::ScriptedModel;

using TextLLMRunnerTest = testing_util::RunnerTest;
using testing_util::Greedy;

TEST_F(TextLLMRunnerTest, PrefillsInOneCallAndStopsAtEos) {
  // Prompt "<s> a b" fills positions 0-2; then the script says c, é, d, </s>.
  ScriptedModel model({0, 0, kC, Byte(0xC3), Byte(0xA9), kD, 2}, 32, 32);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  std::vector<std::string> pieces;
  Stats stats;
  auto ids = runner.Generate("ab", {}, [&](const std::string& s) { pieces.push_back(s); }, &stats);
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
  EXPECT_EQ(stats.stop_reason, "eos");
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
  EXPECT_EQ(ids.error(),
            "the prompt is 5 tokens and 0 are in use, but the model's context holds 4");
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

TEST_F(TextLLMRunnerTest, APromptThatExtendsTheCachePrefillsOnlyItsSuffix) {
  ScriptedModel model({kA}, 32, 32);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  GenerationConfig config;
  config.max_new_tokens = 3;
  auto first = runner.GenerateFromIds({1, kB, kC}, config, [](const std::string&) {}, &stats);
  ASSERT_TRUE(first.ok()) << first.error();
  // The prompt and all sampled tokens but the last are in the cache.
  EXPECT_EQ(runner.cached(), (std::vector<int64_t>{1, kB, kC, kA, kA}));
  model.calls.clear();
  auto second = runner.GenerateFromIds(
      {1, kB, kC, kA, kA, kA, kD}, config, [](const std::string&) {}, &stats);
  ASSERT_TRUE(second.ok()) << second.error();
  ASSERT_FALSE(model.calls.empty());
  EXPECT_EQ(model.calls[0], (std::pair<int64_t, int64_t>(5, 2)));
  EXPECT_EQ(stats.num_prompt_tokens, 2);
  // A prompt that diverges early rewrites the cache from there.
  model.calls.clear();
  auto third = runner.GenerateFromIds({1, kD}, config, [](const std::string&) {}, &stats);
  ASSERT_TRUE(third.ok()) << third.error();
  EXPECT_EQ(model.calls[0], (std::pair<int64_t, int64_t>(1, 1)));
  runner.Reset();
  model.calls.clear();
  ASSERT_TRUE(runner.GenerateFromIds({1, kD}, config, [](const std::string&) {}, &stats).ok());
  EXPECT_EQ(model.calls[0], (std::pair<int64_t, int64_t>(0, 2)));
}

TEST_F(TextLLMRunnerTest, TheCacheKeepsAnImageOnlyForTheSamePixelsAtTheSamePlace) {
  ScriptedModel model({kA}, 32, 32);
  model.set_vision(2, kD);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  GenerationConfig config;
  config.max_new_tokens = 1;
  const std::vector<int64_t> prompt = {1, kA, kD, kD, kB};
  auto run = [&](const std::vector<int64_t>& ids, uint8_t pixel) {
    model.calls.clear();
    model.image_calls.clear();
    return runner.GenerateFromIds(ids, config, [](const std::string&) {}, &stats,
                                  {{2, std::vector<uint8_t>{pixel}}});
  };
  ASSERT_TRUE(run(prompt, 7).ok());
  EXPECT_EQ(model.image_calls, (std::vector<std::pair<int64_t, int64_t>>{{2, 7}}));
  // The next turn: the same image, so only the new tokens run.
  std::vector<int64_t> longer = prompt;
  longer.insert(longer.end(), {kA, kC});
  ASSERT_TRUE(run(longer, 7).ok());
  EXPECT_TRUE(model.image_calls.empty());
  EXPECT_EQ(model.calls, (std::vector<std::pair<int64_t, int64_t>>{{5, 2}}));
  // Other pixels under the same ids: the image and all after it run again.
  ASSERT_TRUE(run(longer, 8).ok());
  EXPECT_EQ(model.image_calls, (std::vector<std::pair<int64_t, int64_t>>{{2, 8}}));
  EXPECT_EQ(stats.num_prompt_tokens, 5);
  // A text prompt with the same ids keeps only what comes before the image.
  model.calls.clear();
  model.image_calls.clear();
  ASSERT_TRUE(runner.GenerateFromIds(longer, config, [](const std::string&) {}, &stats).ok());
  EXPECT_EQ(model.calls[0], (std::pair<int64_t, int64_t>(2, 5)));
}

TEST_F(TextLLMRunnerTest, ASamplingErrorEndsGenerationWithIt) {
  ScriptedModel model({kA}, 32, 32);
  TextLLMRunner runner(&model, tokenizer_.get(),
                       [](const float*, int64_t, const std::vector<int64_t>&) -> Result<int64_t> {
                         return tokenizers::MakeError("logits contain NaN");
                       });
  Stats stats;
  auto ids = runner.Generate("ab", {}, [](const std::string&) {}, &stats);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.error(), "sampling failed: logits contain NaN");
}

TEST_F(TextLLMRunnerTest, TokenizerLargerThanModelIsRejected) {
  ScriptedModel fits({kA}, 8, 8);
  EXPECT_TRUE(ValidateTokenizer(fits.metadata(), *tokenizer_).ok());
  ScriptedModel small({kA}, 8, 8, /*vocab_size=*/200);
  auto v = ValidateTokenizer(small.metadata(), *tokenizer_);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error(),
            "the tokenizer has 263 tokens but the model only 200: they do not belong together");
}

TEST_F(TextLLMRunnerTest, StopFromTheCallbackEndsAfterThatPiece) {
  ScriptedModel model({kA, kB, kC, kD}, 32, 32);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  Stats stats;
  int pieces = 0;
  auto ids = runner.Generate(
      "ab", {},
      [&](const std::string&) {
        if (++pieces == 2) runner.Stop();
      },
      &stats);
  ASSERT_TRUE(ids.ok()) << ids.error();
  EXPECT_EQ(ids->size(), 2u);
  EXPECT_EQ(stats.stop_reason, "stopped");
  // The next call starts with the request cleared, and failures say why.
  ASSERT_TRUE(runner.Generate("ab", {}, [](const std::string&) {}, &stats).ok());
  EXPECT_EQ(stats.stop_reason, "context");  // 128 new tokens do not fit in 32
  EXPECT_EQ(runner.last_failure(), Failure::kNone);
  EXPECT_FALSE(runner.Generate(std::string(40, 'a'), {}, [](const std::string&) {}, &stats).ok());
  EXPECT_EQ(runner.last_failure(), Failure::kContext);
}

}  // namespace
}  // namespace torchchat
