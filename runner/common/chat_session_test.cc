#include "runner/common/chat_session.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runner/common/scripted_model.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {
namespace {

using testing_util::kA;
using testing_util::ScriptedModel;

// ChatML's shape in the test tokenizer's letters: a past reply renders as
// the generation prompt ("c") plus its text, so the rendered prefix of the
// next turn is exactly what the cache holds.
constexpr char kTemplate[] =
    "{% for m in messages %}{% if m.role == 'assistant' %}c{{ m.content }}d"
    "{% else %}{{ m.content }}d{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}c{% endif %}";

using ChatSessionTest = testing_util::RunnerTest;
using testing_util::Greedy;

void Ignore(const std::string&) {}

TEST_F(ChatSessionTest, LaterTurnsPrefillOnlyTheNewTurn) {
  ScriptedModel model({kA}, 64, 64);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  auto session = ChatSession::Create(&runner, tokenizer_.get(), kTemplate);
  ASSERT_TRUE(session.ok()) << session.error();
  GenerationConfig config;
  config.max_new_tokens = 2;
  Stats first;
  auto reply = session->Turn("ab", config, Ignore, &first);
  ASSERT_TRUE(reply.ok()) << reply.error();
  EXPECT_EQ(*reply, "aa");
  ASSERT_FALSE(model.calls.empty());
  EXPECT_EQ(model.calls[0].first, 0);
  const int64_t cached = static_cast<int64_t>(runner.cached().size());
  EXPECT_EQ(cached, first.num_prompt_tokens + 1);  // the last sample never ran

  model.calls.clear();
  Stats second;
  ASSERT_TRUE(session->Turn("ab", config, Ignore, &second).ok());
  // Turn 2 starts where turn 1's cache ends: the reply's last "a" (sampled,
  // never run), then "d" + "abd" + "c".
  EXPECT_EQ(model.calls[0].first, cached);
  EXPECT_EQ(second.num_prompt_tokens, 6);
  ASSERT_EQ(session->messages().size(), 4u);
  EXPECT_EQ(session->messages()[1].content, "aa");
  EXPECT_EQ(session->dropped_last_turn(), 0);
}

TEST_F(ChatSessionTest, ImagesForAProgramWithoutAVisionEncoderAreTheCallersError) {
  ScriptedModel model({kA}, 64, 64);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  auto session = ChatSession::Create(&runner, tokenizer_.get(), kTemplate);
  ASSERT_TRUE(session.ok()) << session.error();
  Stats stats;
  RgbImage image{1, 1, {0, 0, 0}};
  auto reply = session->Turn("ab", {}, Ignore, &stats, {image}, {"x.ppm"});
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.error().find("has no vision encoder"), std::string::npos) << reply.error();
  EXPECT_EQ(session->last_failure(), Failure::kInput);
  EXPECT_TRUE(session->messages().empty());
  EXPECT_TRUE(model.calls.empty());
}

TEST_F(ChatSessionTest, OldTurnsAreDroppedWhenTheContextFills) {
  ScriptedModel model({kA}, 40, 40);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  auto session = ChatSession::Create(&runner, tokenizer_.get(), kTemplate, "bb");
  ASSERT_TRUE(session.ok()) << session.error();
  GenerationConfig config;
  config.max_new_tokens = 4;
  int dropped = 0;
  for (int turn = 0; turn < 8; ++turn) {
    model.calls.clear();
    Stats stats;
    // Consecutive questions differ, so a dropped exchange changes the prefix.
    auto reply = session->Turn(std::string(8, turn % 2 ? 'd' : 'c'), config, Ignore, &stats);
    ASSERT_TRUE(reply.ok()) << "turn " << turn << ": " << reply.error();
    for (const auto& [pos, n] : model.calls) EXPECT_LT(pos + n - 1, 40);
    if (session->dropped_last_turn() > 0) {
      ++dropped;
      // The system prompt stays, so only it is reused from the cache.
      EXPECT_LE(model.calls[0].first, 5);
      EXPECT_EQ(session->messages()[0].role, "system");
      EXPECT_EQ(session->messages()[1].role, "user");
    }
  }
  EXPECT_GT(dropped, 0);
}

TEST_F(ChatSessionTest, AQuestionTooLongAloneIsAnErrorAndChangesNothing) {
  ScriptedModel model({kA}, 16, 16);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  auto session = ChatSession::Create(&runner, tokenizer_.get(), kTemplate);
  ASSERT_TRUE(session.ok()) << session.error();
  GenerationConfig config;
  config.max_new_tokens = 2;
  Stats stats;
  ASSERT_TRUE(session->Turn("ab", config, Ignore, &stats).ok());
  auto reply = session->Turn(std::string(40, 'a'), config, Ignore, &stats);
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.error().find("the model's context holds 16"), std::string::npos) << reply.error();
  EXPECT_EQ(session->messages().size(), 2u);
}

TEST_F(ChatSessionTest, NoTemplateIsAClearError) {
  ScriptedModel model({kA}, 16, 16);
  TextLLMRunner runner(&model, tokenizer_.get(), Greedy());
  auto session = ChatSession::Create(&runner, tokenizer_.get(), "");
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.error(),
            "the tokenizer has no chat template (tokenizer_config.json); use -m generate");
}

}  // namespace
}  // namespace torchchat
