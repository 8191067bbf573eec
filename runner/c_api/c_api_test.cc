// The C API's contract over a scripted model: handles, status codes, the
// error text, buffers, stopping, the cache between calls. CI also runs it
// under ASan + UBSan (LeakSanitizer included) with clang.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "runner/c_api/torchchat.h"
#include "runner/common/scripted_model.h"

namespace {

using torchchat::testing_util::kA;
using torchchat::testing_util::kB;

class CApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_path_ = torchchat::testing_util::WriteTokenizer();
    opts_ = torchchat_runner_default_options();
    opts_.tokenizer_path = tokenizer_path_.c_str();
  }
  torchchat_runner* Create(const char* path = "scripted:64") {
    torchchat_runner* r = nullptr;
    EXPECT_EQ(torchchat_runner_create(path, &opts_, &r), TORCHCHAT_OK) << torchchat_last_error();
    return r;
  }
  std::string tokenizer_path_;
  torchchat_runner_options opts_;
};

struct Collected {
  std::string text;
  int calls = 0;
  int stop_after = -1;  // stop when calls reaches it
};

int Collect(const char* text, size_t len, void* user) {
  auto* c = static_cast<Collected*>(user);
  EXPECT_EQ(std::strlen(text), len);
  c->text.append(text, len);
  ++c->calls;
  return c->calls == c->stop_after ? 1 : 0;
}

TEST_F(CApiTest, GeneratesTheScript) {
  torchchat_runner* r = Create();
  ASSERT_NE(r, nullptr);
  EXPECT_STREQ(torchchat_backend(), "scripted");
  EXPECT_EQ(torchchat_api_version(), TORCHCHAT_API_VERSION);
  EXPECT_EQ(torchchat_runner_max_context(r), 64);
  torchchat_generation_config config = torchchat_default_generation_config();
  config.max_new_tokens = 6;
  Collected out;
  torchchat_stats stats;
  // "<s> a b" fills positions 0-2: the script continues at position 2.
  ASSERT_EQ(torchchat_generate(r, "ab", &config, Collect, &out, &stats), TORCHCHAT_OK)
      << torchchat_last_error();
  EXPECT_EQ(out.text, "cdabcd");
  EXPECT_STREQ(torchchat_last_error(), "");
  EXPECT_EQ(stats.num_prompt_tokens, 3);
  EXPECT_EQ(stats.num_generated_tokens, 6);
  EXPECT_EQ(stats.stop_reason, TORCHCHAT_STOP_MAX_NEW_TOKENS);
  EXPECT_LE(stats.model_load_start_ms, stats.model_load_end_ms);

  // The next prompt extends the cache: only its new token is prefilled.
  ASSERT_EQ(torchchat_generate(r, "abcdabc", &config, nullptr, nullptr, &stats), TORCHCHAT_OK);
  EXPECT_EQ(stats.num_prompt_tokens, 1);
  ASSERT_EQ(torchchat_runner_reset(r), TORCHCHAT_OK);
  ASSERT_EQ(torchchat_generate(r, "abcdabc", &config, nullptr, nullptr, &stats), TORCHCHAT_OK);
  EXPECT_EQ(stats.num_prompt_tokens, 8);

  size_t len = 0;
  ASSERT_EQ(torchchat_stats_json(&stats, nullptr, 0, &len), TORCHCHAT_ERROR_BUFFER_TOO_SMALL);
  std::string json(len + 1, '\0');
  ASSERT_EQ(torchchat_stats_json(&stats, json.data(), json.size(), &len), TORCHCHAT_OK);
  EXPECT_NE(json.find("\"stop_reason\": \"max_new_tokens\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"num_prompt_tokens\": 8"), std::string::npos) << json;
  torchchat_runner_free(r);
}

TEST_F(CApiTest, ACallbackStopsGeneration) {
  torchchat_runner* r = Create();
  for (int stop_after : {1, 3}) {
    Collected out;
    out.stop_after = stop_after;
    torchchat_stats stats;
    ASSERT_EQ(torchchat_generate(r, "ab", nullptr, Collect, &out, &stats), TORCHCHAT_OK);
    EXPECT_EQ(out.calls, stop_after);
    EXPECT_EQ(stats.num_generated_tokens, stop_after);
    EXPECT_EQ(stats.stop_reason, TORCHCHAT_STOP_STOPPED);
  }
  // A stop asked for between calls does not stop the next one.
  torchchat_runner_stop(r);
  torchchat_generation_config config = torchchat_default_generation_config();
  config.max_new_tokens = 3;
  torchchat_stats stats;
  ASSERT_EQ(torchchat_generate(r, "ab", &config, nullptr, nullptr, &stats), TORCHCHAT_OK);
  EXPECT_EQ(stats.num_generated_tokens, 3);
  torchchat_runner_free(r);
}

TEST_F(CApiTest, SeededSamplingRepeats) {
  torchchat_runner* r = Create();
  torchchat_generation_config config = torchchat_default_generation_config();
  config.temperature = 5.0f;  // flat enough that every letter can come up
  config.seed = 42;
  config.max_new_tokens = 12;
  Collected a, b;
  ASSERT_EQ(torchchat_generate(r, "ab", &config, Collect, &a, nullptr), TORCHCHAT_OK);
  ASSERT_EQ(torchchat_generate(r, "ab", &config, Collect, &b, nullptr), TORCHCHAT_OK);
  EXPECT_EQ(a.text, b.text);
  EXPECT_NE(a.text, "cdabcdabcdab");  // it did sample
  torchchat_runner_free(r);
}

TEST_F(CApiTest, ErrorsHaveACodeAndOneLine) {
  auto expect = [](torchchat_status got, torchchat_status want, const char* needle) {
    EXPECT_EQ(got, want) << torchchat_status_name(got) << ": " << torchchat_last_error();
    const std::string msg = torchchat_last_error();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  torchchat_runner* r = reinterpret_cast<torchchat_runner*>(0x1);  // must be overwritten
  expect(torchchat_runner_create(nullptr, &opts_, &r), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "model_path is NULL");
  EXPECT_EQ(r, nullptr);
  expect(torchchat_runner_create("scripted:64", &opts_, nullptr), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "out is NULL");
  expect(torchchat_runner_create("/no/such.pte", &opts_, &r), TORCHCHAT_ERROR_LOAD,
         "cannot load /no/such.pte");
  EXPECT_EQ(r, nullptr);
  torchchat_runner_options bad = opts_;
  bad.tokenizer_path = "/no/such/tokenizer.json";
  expect(torchchat_runner_create("scripted:64", &bad, &r), TORCHCHAT_ERROR_LOAD,
         "/no/such/tokenizer.json");
  bad = opts_;
  bad.max_context = 65;
  expect(torchchat_runner_create("scripted:64", &bad, &r), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "exceeds the artifact's context of 64");
  bad = opts_;
  bad.num_threads = -1;
  expect(torchchat_runner_create("scripted:64", &bad, &r), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "num_threads");
  bad = opts_;
  bad.tokenizer_path = nullptr;  // nothing beside "scripted:64"
  expect(torchchat_runner_create("scripted:64", &bad, &r), TORCHCHAT_ERROR_LOAD,
         "no tokenizer file beside");

  expect(torchchat_generate(nullptr, "ab", nullptr, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "runner is NULL");
  r = Create("scripted:8");
  expect(torchchat_generate(r, nullptr, nullptr, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "prompt is NULL");
  expect(torchchat_generate(r, "a\xff", nullptr, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "not valid UTF-8 (byte 1)");
  expect(torchchat_generate(r, "abcdabcd", nullptr, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_CONTEXT, "context holds 8");
  torchchat_generation_config config = torchchat_default_generation_config();
  config.max_new_tokens = 0;
  expect(torchchat_generate(r, "ab", &config, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "max_new_tokens");
  config = torchchat_default_generation_config();
  config.top_p = 1.5f;
  expect(torchchat_generate(r, "ab", &config, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "top_p");
  // The runner still works after every error.
  torchchat_stats stats;
  ASSERT_EQ(torchchat_generate(r, "ab", nullptr, nullptr, nullptr, &stats), TORCHCHAT_OK);
  // 8 positions, 3 in the prompt: the loop stops when the context is full.
  EXPECT_EQ(stats.stop_reason, TORCHCHAT_STOP_CONTEXT);

  // A llama2c tokenizer has no chat template.
  torchchat_chat* chat = reinterpret_cast<torchchat_chat*>(0x1);
  expect(torchchat_chat_create(r, nullptr, &chat), TORCHCHAT_ERROR_LOAD, "no chat template");
  EXPECT_EQ(chat, nullptr);
  expect(torchchat_chat_create(nullptr, nullptr, &chat), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "runner is NULL");
  expect(torchchat_chat_turn(nullptr, "hi", nullptr, nullptr, nullptr, nullptr),
         TORCHCHAT_ERROR_INVALID_ARGUMENT, "chat is NULL");
  expect(torchchat_chat_reset(nullptr), TORCHCHAT_ERROR_INVALID_ARGUMENT, "chat is NULL");
  expect(torchchat_runner_reset(nullptr), TORCHCHAT_ERROR_INVALID_ARGUMENT, "runner is NULL");
  expect(torchchat_runner_tokenizer(nullptr, nullptr), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "out is NULL");
  expect(torchchat_stats_json(nullptr, nullptr, 0, nullptr), TORCHCHAT_ERROR_INVALID_ARGUMENT,
         "stats is NULL");
  EXPECT_EQ(torchchat_runner_max_context(nullptr), -1);
  EXPECT_EQ(torchchat_runner_vocab_size(nullptr), -1);
  EXPECT_EQ(torchchat_chat_dropped_last_turn(nullptr), -1);
  torchchat_runner_stop(nullptr);

  // Freeing NULL is defined, so free-then-NULL-then-free is safe.
  torchchat_runner_free(r);
  r = nullptr;
  torchchat_runner_free(r);
  torchchat_chat_free(nullptr);
  torchchat_tokenizer_free(nullptr);
}

TEST_F(CApiTest, MaxContextCapsTheArtifact) {
  opts_.max_context = 6;
  torchchat_runner* r = Create();
  EXPECT_EQ(torchchat_runner_max_context(r), 6);
  EXPECT_EQ(torchchat_generate(r, "abcdab", nullptr, nullptr, nullptr, nullptr),
            TORCHCHAT_ERROR_CONTEXT);
  torchchat_stats stats;
  ASSERT_EQ(torchchat_generate(r, "ab", nullptr, nullptr, nullptr, &stats), TORCHCHAT_OK);
  // Positions 3, 4 and 5 run; the token sampled from position 5 needs none.
  EXPECT_EQ(stats.num_generated_tokens, 4);
  EXPECT_EQ(stats.stop_reason, TORCHCHAT_STOP_CONTEXT);
  torchchat_runner_free(r);
}

TEST_F(CApiTest, Tokenizer) {
  torchchat_tokenizer* tok = nullptr;
  ASSERT_EQ(torchchat_tokenizer_load(tokenizer_path_.c_str(), &tok), TORCHCHAT_OK);
  EXPECT_EQ(torchchat_tokenizer_vocab_size(tok), torchchat::testing_util::kVocab);
  EXPECT_EQ(torchchat_tokenizer_bos_id(tok), 1);
  size_t n = 0;
  int32_t eos[4];
  ASSERT_EQ(torchchat_tokenizer_eos_ids(tok, eos, 4, &n), TORCHCHAT_OK);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(eos[0], 2);

  const std::string text = "ab\xC3\xA9";
  ASSERT_EQ(torchchat_tokenizer_encode(tok, text.data(), text.size(), 1, nullptr, 0, &n),
            TORCHCHAT_ERROR_BUFFER_TOO_SMALL);
  ASSERT_EQ(n, 5u);  // <s> a b and the two bytes of é
  std::vector<int32_t> ids(n);
  ASSERT_EQ(torchchat_tokenizer_encode(tok, text.data(), text.size(), 1, ids.data(), 2, &n),
            TORCHCHAT_ERROR_BUFFER_TOO_SMALL);
  ASSERT_EQ(
      torchchat_tokenizer_encode(tok, text.data(), text.size(), 1, ids.data(), ids.size(), &n),
      TORCHCHAT_OK);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], kA);
  EXPECT_EQ(ids[2], kB);

  size_t len = 0;
  ASSERT_EQ(torchchat_tokenizer_decode(tok, ids.data() + 1, 4, nullptr, 0, &len),
            TORCHCHAT_ERROR_BUFFER_TOO_SMALL);
  ASSERT_EQ(len, text.size());
  std::string out(len, 'x');  // no room for the NUL
  ASSERT_EQ(torchchat_tokenizer_decode(tok, ids.data() + 1, 4, out.data(), len, &len),
            TORCHCHAT_ERROR_BUFFER_TOO_SMALL);
  out.resize(len + 1);
  ASSERT_EQ(torchchat_tokenizer_decode(tok, ids.data() + 1, 4, out.data(), out.size(), &len),
            TORCHCHAT_OK);
  EXPECT_EQ(std::string(out.c_str()), text);

  const int32_t bad_id = 100000;
  EXPECT_EQ(torchchat_tokenizer_decode(tok, &bad_id, 1, out.data(), out.size(), &len),
            TORCHCHAT_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(torchchat_last_error()).find("outside the vocabulary"), std::string::npos);
  EXPECT_EQ(torchchat_tokenizer_encode(tok, "\xC3", 1, 0, ids.data(), ids.size(), &n),
            TORCHCHAT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(torchchat_tokenizer_encode(tok, nullptr, 3, 0, ids.data(), ids.size(), &n),
            TORCHCHAT_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(torchchat_tokenizer_encode(tok, nullptr, 0, 0, nullptr, 0, &n), TORCHCHAT_OK);
  EXPECT_EQ(n, 0u);
  torchchat_tokenizer_free(tok);

  torchchat_tokenizer* missing = reinterpret_cast<torchchat_tokenizer*>(0x1);
  EXPECT_EQ(torchchat_tokenizer_load("/no/such/tokenizer.json", &missing), TORCHCHAT_ERROR_LOAD);
  EXPECT_EQ(missing, nullptr);
  const std::string garbage = std::string(std::getenv("TEST_TMPDIR")) + "/garbage.json";
  FILE* f = std::fopen(garbage.c_str(), "w");
  std::fputs("{\"model\": [", f);
  std::fclose(f);
  EXPECT_EQ(torchchat_tokenizer_load(garbage.c_str(), &missing), TORCHCHAT_ERROR_LOAD);
  EXPECT_EQ(std::string(torchchat_last_error()).find('\n'), std::string::npos);
}

TEST_F(CApiTest, HandlesOutliveTheirRunner) {
  torchchat_runner* r = Create();
  torchchat_tokenizer* tok = nullptr;
  ASSERT_EQ(torchchat_runner_tokenizer(r, &tok), TORCHCHAT_OK);
  torchchat_runner_free(r);
  size_t n = 0;
  int32_t ids[4];
  ASSERT_EQ(torchchat_tokenizer_encode(tok, "ab", 2, 0, ids, 4, &n), TORCHCHAT_OK);
  EXPECT_EQ(n, 2u);
  torchchat_tokenizer_free(tok);
}

struct LogLines {
  std::vector<std::pair<torchchat_log_level, std::string>> lines;
};

void CollectLog(torchchat_log_level level, const char* line, void* user) {
  static_cast<LogLines*>(user)->lines.emplace_back(level, line);
}

// The scripted backend logs "loaded scripted:N" at INFO on each load, as a
// runtime would.
TEST_F(CApiTest, QuietUnlessAskedToLog) {
  ::testing::internal::CaptureStderr();
  torchchat_runner_free(Create());
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");

  ASSERT_EQ(torchchat_set_log(TORCHCHAT_LOG_INFO, nullptr, nullptr), TORCHCHAT_OK);
  ::testing::internal::CaptureStderr();
  torchchat_runner_free(Create());
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "scripted_backend.cc] loaded scripted:64\n");

  LogLines got;
  ASSERT_EQ(torchchat_set_log(TORCHCHAT_LOG_ERROR, CollectLog, &got), TORCHCHAT_OK);
  torchchat_runner_free(Create());
  EXPECT_TRUE(got.lines.empty());
  ASSERT_EQ(torchchat_set_log(TORCHCHAT_LOG_DEBUG, CollectLog, &got), TORCHCHAT_OK);
  ::testing::internal::CaptureStderr();
  torchchat_runner_free(Create());
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  ASSERT_EQ(got.lines.size(), 1u);
  EXPECT_EQ(got.lines[0].first, TORCHCHAT_LOG_INFO);
  EXPECT_EQ(got.lines[0].second, "scripted_backend.cc] loaded scripted:64");

  EXPECT_EQ(torchchat_set_log(static_cast<torchchat_log_level>(7), nullptr, nullptr),
            TORCHCHAT_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(torchchat_last_error(),
               "torchchat_set_log: min_level 7 is not a torchchat_log_level");
  ASSERT_EQ(torchchat_set_log(TORCHCHAT_LOG_OFF, nullptr, nullptr), TORCHCHAT_OK);
}

}  // namespace
