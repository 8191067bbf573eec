// torchchat.h over the shared loop: TextLLMRunner, ChatSession, the
// tokenizers and the sampler. Only handles, status codes and the error text
// live here; every decision about generation is the loop's.
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "runner/c_api/backend.h"
#include "runner/c_api/torchchat.h"
#include "runner/common/chat_session.h"
#include "runner/common/image.h"
#include "runner/common/llm_runner_helper.h"
#include "runner/common/model.h"
#include "runner/common/stats.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/sampler.h"
#include "tokenizers/tokenizer.h"
#include "tokenizers/utf8.h"

namespace torchchat::c_api {
namespace {

thread_local std::string g_last_error;

// torchchat_set_log's settings. Lines are rare (loading), so a mutex.
struct LogSink {
  std::mutex mu;
  torchchat_log_level min_level = TORCHCHAT_LOG_OFF;
  torchchat_log_callback callback = nullptr;
  void* user_data = nullptr;
};

LogSink& Sink() {
  static LogSink* sink = new LogSink();  // never destroyed: runtimes log from exit handlers
  return *sink;
}

torchchat_status Fail(torchchat_status status, std::string message) {
  g_last_error = std::move(message);
  return status;
}

torchchat_status Ok() {
  g_last_error.clear();
  return TORCHCHAT_OK;
}

// No exception may cross into C: libtorch and the C++ library can throw
// (bad_alloc, c10::Error) where the loop itself never does.
template <typename F>
torchchat_status Guard(const char* what, F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    return Fail(TORCHCHAT_ERROR_RUNTIME,
                std::string(what) + " failed: " + msg.substr(0, msg.find('\n')));
  } catch (...) {
    return Fail(TORCHCHAT_ERROR_RUNTIME, std::string(what) + " failed: unknown exception");
  }
}

torchchat_status NullArgument(const char* function, const char* name) {
  return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(function) + ": " + name + " is NULL");
}

// Caps the context below the artifact's (options.max_context).
class CappedModel : public LLMModel {
 public:
  CappedModel(std::unique_ptr<LLMModel> inner, int64_t max_seq_len) : inner_(std::move(inner)) {
    md_ = inner_->metadata();
    md_.max_seq_len = max_seq_len;
    md_.max_prefill_chunk = std::min(md_.max_prefill_chunk, max_seq_len);
  }
  const ModelMetadata& metadata() const override { return md_; }
  Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    return inner_->Forward(tokens, start_pos);
  }
  Result<const float*> ForwardImage(const std::vector<uint8_t>& pixels,
                                    int64_t start_pos) override {
    return inner_->ForwardImage(pixels, start_pos);
  }

 private:
  std::unique_ptr<LLMModel> inner_;
  ModelMetadata md_;
};

struct RunnerState {
  std::unique_ptr<LLMModel> model;
  std::shared_ptr<const tokenizers::Tokenizer> tokenizer;
  std::unique_ptr<TextLLMRunner> runner;
  double load_start_ms = 0;
  double load_end_ms = 0;
};

const char* StopReasonName(torchchat_stop_reason r) {
  switch (r) {
    case TORCHCHAT_STOP_EOS:
      return "eos";
    case TORCHCHAT_STOP_MAX_NEW_TOKENS:
      return "max_new_tokens";
    case TORCHCHAT_STOP_CONTEXT:
      return "context";
    case TORCHCHAT_STOP_STOPPED:
      return "stopped";
  }
  return "unknown";
}

torchchat_stop_reason StopReasonOf(const std::string& name) {
  for (auto r : {TORCHCHAT_STOP_EOS, TORCHCHAT_STOP_MAX_NEW_TOKENS, TORCHCHAT_STOP_CONTEXT,
                 TORCHCHAT_STOP_STOPPED}) {
    if (name == StopReasonName(r)) return r;
  }
  return TORCHCHAT_STOP_MAX_NEW_TOKENS;
}

void ExportStats(const Stats& s, const RunnerState& state, torchchat_stats* out) {
  if (out == nullptr) return;
  out->model_load_start_ms = state.load_start_ms;
  out->model_load_end_ms = state.load_end_ms;
  out->inference_start_ms = s.inference_start_ms;
  out->prompt_eval_end_ms = s.prompt_eval_end_ms;
  out->first_token_ms = s.first_token_ms;
  out->inference_end_ms = s.inference_end_ms;
  out->num_prompt_tokens = s.num_prompt_tokens;
  out->num_generated_tokens = s.num_generated_tokens;
  out->peak_rss_bytes = s.peak_rss_bytes;
  out->stop_reason = StopReasonOf(s.stop_reason);
}

torchchat_status CheckText(const char* function, const char* name, const char* text) {
  if (text == nullptr) return NullArgument(function, name);
  if (const size_t bad = tokenizers::FindInvalidUtf8(text); bad != std::string::npos) {
    return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(function) + ": " + name +
                                                      " is not valid UTF-8 (byte " +
                                                      std::to_string(bad) + ")");
  }
  return TORCHCHAT_OK;
}

// Checks the config and points the runner at a fresh sampler for this call.
torchchat_status Configure(const char* function, const torchchat_generation_config* c,
                           TextLLMRunner* runner, GenerationConfig* out) {
  const torchchat_generation_config config = c ? *c : torchchat_default_generation_config();
  if (config.max_new_tokens < 1) {
    return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(function) +
                                                      ": max_new_tokens must be at least 1, not " +
                                                      std::to_string(config.max_new_tokens));
  }
  tokenizers::SamplerConfig sampling;
  sampling.temperature = config.temperature;
  sampling.top_k = config.top_k;
  sampling.top_p = config.top_p;
  sampling.min_p = config.min_p;
  sampling.repetition_penalty = config.repetition_penalty;
  if (auto v = tokenizers::ValidateSamplerConfig(sampling); !v.ok()) {
    return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(function) + ": " + v.error());
  }
  const uint64_t seed = config.seed == TORCHCHAT_SEED_RANDOM ? std::random_device{}() : config.seed;
  runner->set_sample(MakeSampleFn(sampling, seed));
  out->max_new_tokens = config.max_new_tokens;
  return TORCHCHAT_OK;
}

std::function<void(const std::string&)> TextSink(TextLLMRunner* runner,
                                                 torchchat_text_callback callback,
                                                 void* user_data) {
  return [=](const std::string& text) {
    if (callback != nullptr && callback(text.c_str(), text.size(), user_data) != 0) {
      runner->Stop();
    }
  };
}

torchchat_status GenerationFailed(const char* function, Failure failure,
                                  const std::string& message) {
  const torchchat_status status = failure == Failure::kContext ? TORCHCHAT_ERROR_CONTEXT
                                  : failure == Failure::kInput ? TORCHCHAT_ERROR_INVALID_ARGUMENT
                                                               : TORCHCHAT_ERROR_RUNTIME;
  return Fail(status, std::string(function) + ": " + message);
}

// What torchchat_generate and torchchat_chat_turn share: check the text and
// the config, run `step` with the streaming sink, and turn a failure into a
// status. A step can fail before it reaches the loop (a chat template); the
// loop's failure kind is then an earlier call's, so it counts only when the
// loop started (inference_start_ms is set). A chat's session knows why its
// turn failed, the loop's reason included.
template <typename Step>
torchchat_status RunGeneration(const char* fn, RunnerState& state, const char* text_name,
                               const char* text, const torchchat_generation_config* config,
                               torchchat_text_callback callback, void* user_data,
                               torchchat_stats* stats, Step step,
                               const ChatSession* session = nullptr) {
  if (auto s = CheckText(fn, text_name, text); s != TORCHCHAT_OK) return s;
  GenerationConfig gen;
  if (auto s = Configure(fn, config, state.runner.get(), &gen); s != TORCHCHAT_OK) return s;
  return Guard(fn, [&]() -> torchchat_status {
    Stats s;
    const Result<void> done = step(gen, TextSink(state.runner.get(), callback, user_data), &s);
    if (!done.ok()) {
      const bool ran = s.inference_start_ms != 0;
      const Failure why = session != nullptr ? session->last_failure()
                          : ran              ? state.runner->last_failure()
                                             : Failure::kModel;
      return GenerationFailed(fn, why, done.error());
    }
    ExportStats(s, state, stats);
    return Ok();
  });
}

// The caller's images as RgbImages; the pixels are copied, so they need
// live only during the call.
torchchat_status ToRgb(const char* fn, const torchchat_image* images, size_t n_images,
                       std::vector<RgbImage>* out) {
  if (images == nullptr && n_images != 0) return NullArgument(fn, "images");
  out->resize(n_images);
  for (size_t i = 0; i < n_images; ++i) {
    const torchchat_image& im = images[i];
    if (im.rgb == nullptr || im.width <= 0 || im.height <= 0) {
      return Fail(
          TORCHCHAT_ERROR_INVALID_ARGUMENT,
          std::string(fn) + ": image " + std::to_string(i + 1) + " has no pixels or no size");
    }
    (*out)[i].width = im.width;
    (*out)[i].height = im.height;
    (*out)[i].rgb.assign(im.rgb, im.rgb + static_cast<size_t>(im.width) * im.height * 3);
  }
  return TORCHCHAT_OK;
}

torchchat_status CopyText(const std::string& text, char* buf, size_t cap, size_t* len) {
  *len = text.size();
  if (buf == nullptr || cap < text.size() + 1) {
    return Fail(TORCHCHAT_ERROR_BUFFER_TOO_SMALL, "the buffer holds " + std::to_string(cap) +
                                                      " bytes; " + std::to_string(text.size() + 1) +
                                                      " are needed");
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  return Ok();
}

template <typename T>
torchchat_status CopyIds(const std::vector<T>& ids, int32_t* out, size_t cap, size_t* n) {
  *n = ids.size();
  if (ids.empty()) return Ok();
  if (out == nullptr || cap < ids.size()) {
    return Fail(TORCHCHAT_ERROR_BUFFER_TOO_SMALL, "the buffer holds " + std::to_string(cap) +
                                                      " ids; " + std::to_string(ids.size()) +
                                                      " are needed");
  }
  for (size_t i = 0; i < ids.size(); ++i) out[i] = static_cast<int32_t>(ids[i]);
  return Ok();
}

}  // namespace

void EmitLog(torchchat_log_level level, const std::string& line) {
  LogSink& sink = Sink();
  torchchat_log_callback callback;
  void* user_data;
  {
    std::lock_guard<std::mutex> lock(sink.mu);
    if (level < sink.min_level) return;
    callback = sink.callback;
    user_data = sink.user_data;
  }
  // Outside the lock: the callback may call torchchat_set_log.
  if (callback != nullptr) {
    callback(level, line.c_str(), user_data);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}
}  // namespace torchchat::c_api

using torchchat::c_api::CheckText;
using torchchat::c_api::Fail;
using torchchat::c_api::Guard;
using torchchat::c_api::NullArgument;
using torchchat::c_api::Ok;
using torchchat::c_api::RunnerState;

struct torchchat_runner {
  std::shared_ptr<RunnerState> state;
};

struct torchchat_chat {
  std::shared_ptr<RunnerState> state;  // keeps the runner alive
  std::optional<torchchat::ChatSession> session;
};

struct torchchat_tokenizer {
  std::shared_ptr<const tokenizers::Tokenizer> tokenizer;
};

extern "C" {

int32_t torchchat_api_version(void) { return TORCHCHAT_API_VERSION; }

const char* torchchat_backend(void) { return torchchat::c_api::BackendName(); }

const char* torchchat_last_error(void) { return torchchat::c_api::g_last_error.c_str(); }

torchchat_status torchchat_set_log(torchchat_log_level min_level, torchchat_log_callback callback,
                                   void* user_data) {
  // A C caller may pass any int; reading it as the enum would be undefined
  // behaviour in C++ when it is out of range, so its bytes are read as one.
  static_assert(sizeof(int) == sizeof(torchchat_log_level));
  int raw;
  std::memcpy(&raw, &min_level, sizeof raw);
  if (raw < TORCHCHAT_LOG_DEBUG || raw > TORCHCHAT_LOG_OFF) {
    return Fail(
        TORCHCHAT_ERROR_INVALID_ARGUMENT,
        "torchchat_set_log: min_level " + std::to_string(raw) + " is not a torchchat_log_level");
  }
  torchchat::c_api::RouteRuntimeLog();
  auto& sink = torchchat::c_api::Sink();
  std::lock_guard<std::mutex> lock(sink.mu);
  sink.min_level = min_level;
  sink.callback = callback;
  sink.user_data = user_data;
  return Ok();
}

const char* torchchat_status_name(torchchat_status status) {
  switch (status) {
    case TORCHCHAT_OK:
      return "TORCHCHAT_OK";
    case TORCHCHAT_ERROR_INVALID_ARGUMENT:
      return "TORCHCHAT_ERROR_INVALID_ARGUMENT";
    case TORCHCHAT_ERROR_LOAD:
      return "TORCHCHAT_ERROR_LOAD";
    case TORCHCHAT_ERROR_CONTEXT:
      return "TORCHCHAT_ERROR_CONTEXT";
    case TORCHCHAT_ERROR_RUNTIME:
      return "TORCHCHAT_ERROR_RUNTIME";
    case TORCHCHAT_ERROR_BUFFER_TOO_SMALL:
      return "TORCHCHAT_ERROR_BUFFER_TOO_SMALL";
  }
  return "TORCHCHAT_STATUS_UNKNOWN";
}

torchchat_runner_options torchchat_runner_default_options(void) {
  torchchat_runner_options o;
  o.tokenizer_path = nullptr;
  o.num_threads = 0;
  o.max_context = 0;
  return o;
}

torchchat_status torchchat_runner_create(const char* model_path,
                                         const torchchat_runner_options* options,
                                         torchchat_runner** out) {
  constexpr const char* kFn = "torchchat_runner_create";
  if (out == nullptr) return NullArgument(kFn, "out");
  *out = nullptr;
  if (model_path == nullptr) return NullArgument(kFn, "model_path");
  const torchchat_runner_options o = options ? *options : torchchat_runner_default_options();
  if (o.num_threads < 0) {
    return Fail(
        TORCHCHAT_ERROR_INVALID_ARGUMENT,
        std::string(kFn) + ": num_threads must be >= 0, not " + std::to_string(o.num_threads));
  }
  if (o.max_context < 0) {
    return Fail(
        TORCHCHAT_ERROR_INVALID_ARGUMENT,
        std::string(kFn) + ": max_context must be >= 0, not " + std::to_string(o.max_context));
  }
  torchchat::c_api::RouteRuntimeLog();
  return Guard(kFn, [&]() -> torchchat_status {
    auto state = std::make_shared<RunnerState>();
    state->load_start_ms = torchchat::NowMs();
    auto llm = torchchat::LoadLLM(torchchat::c_api::LoadBackendModel, model_path,
                                  o.tokenizer_path ? o.tokenizer_path : "", o.num_threads);
    if (!llm.ok()) return Fail(TORCHCHAT_ERROR_LOAD, llm.error());
    const int64_t artifact_context = llm->model->metadata().max_seq_len;
    if (o.max_context > artifact_context) {
      return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT,
                  std::string(kFn) + ": max_context " + std::to_string(o.max_context) +
                      " exceeds the artifact's context of " + std::to_string(artifact_context));
    }
    state->model = std::move(llm->model);
    if (o.max_context > 0 && o.max_context < artifact_context) {
      state->model =
          std::make_unique<torchchat::c_api::CappedModel>(std::move(state->model), o.max_context);
    }
    state->tokenizer = std::move(llm->tokenizer);
    state->runner = std::make_unique<torchchat::TextLLMRunner>(state->model.get(),
                                                               state->tokenizer.get(), nullptr);
    state->load_end_ms = torchchat::NowMs();
    *out = new torchchat_runner{std::move(state)};
    return Ok();
  });
}

void torchchat_runner_free(torchchat_runner* runner) { delete runner; }

int64_t torchchat_runner_max_context(const torchchat_runner* runner) {
  return runner ? runner->state->model->metadata().max_seq_len : -1;
}

int64_t torchchat_runner_vocab_size(const torchchat_runner* runner) {
  return runner ? runner->state->model->metadata().vocab_size : -1;
}

torchchat_status torchchat_runner_tokenizer(const torchchat_runner* runner,
                                            torchchat_tokenizer** out) {
  constexpr const char* kFn = "torchchat_runner_tokenizer";
  if (out == nullptr) return NullArgument(kFn, "out");
  *out = nullptr;
  if (runner == nullptr) return NullArgument(kFn, "runner");
  return Guard(kFn, [&]() -> torchchat_status {
    *out = new torchchat_tokenizer{runner->state->tokenizer};
    return Ok();
  });
}

void torchchat_runner_stop(torchchat_runner* runner) {
  if (runner != nullptr) runner->state->runner->Stop();
}

torchchat_status torchchat_runner_reset(torchchat_runner* runner) {
  if (runner == nullptr) return NullArgument("torchchat_runner_reset", "runner");
  runner->state->runner->Reset();
  return Ok();
}

torchchat_generation_config torchchat_default_generation_config(void) {
  torchchat_generation_config c;
  c.max_new_tokens = 128;
  c.temperature = 0.0f;
  c.top_k = 0;
  c.top_p = 1.0f;
  c.min_p = 0.0f;
  c.repetition_penalty = 1.0f;
  c.seed = TORCHCHAT_SEED_RANDOM;
  return c;
}

torchchat_status torchchat_generate(torchchat_runner* runner, const char* prompt,
                                    const torchchat_generation_config* config,
                                    torchchat_text_callback callback, void* user_data,
                                    torchchat_stats* stats) {
  constexpr const char* kFn = "torchchat_generate";
  if (runner == nullptr) return NullArgument(kFn, "runner");
  RunnerState& state = *runner->state;
  return torchchat::c_api::RunGeneration(
      kFn, state, "prompt", prompt, config, callback, user_data, stats,
      [&](const torchchat::GenerationConfig& gen, const auto& sink,
          torchchat::Stats* s) -> tokenizers::Result<void> {
        auto ids = state.runner->Generate(prompt, gen, sink, s);
        if (!ids.ok()) return tokenizers::MakeError(ids.error());
        return {};
      });
}

int64_t torchchat_runner_image_size(const torchchat_runner* runner) {
  if (runner == nullptr) return -1;
  return runner->state->model->metadata().vision.image_size;
}

torchchat_status torchchat_generate_with_images(torchchat_runner* runner, const char* prompt,
                                                const torchchat_image* images, size_t n_images,
                                                const torchchat_generation_config* config,
                                                torchchat_text_callback callback, void* user_data,
                                                torchchat_stats* stats) {
  constexpr const char* kFn = "torchchat_generate_with_images";
  if (runner == nullptr) return NullArgument(kFn, "runner");
  if (auto s = CheckText(kFn, "prompt", prompt); s != TORCHCHAT_OK) return s;
  RunnerState& state = *runner->state;
  torchchat::ImagePrompt built;
  const torchchat_status checked = Guard(kFn, [&]() -> torchchat_status {
    std::vector<torchchat::RgbImage> rgb;
    if (auto s = torchchat::c_api::ToRgb(kFn, images, n_images, &rgb); s != TORCHCHAT_OK) return s;
    auto got = torchchat::BuildImagePrompt(prompt, rgb, {}, *state.tokenizer,
                                           state.model->metadata().vision, "this program");
    if (!got.ok())
      return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(kFn) + ": " + got.error());
    built = std::move(*got);
    return Ok();
  });
  if (checked != TORCHCHAT_OK) return checked;
  return torchchat::c_api::RunGeneration(
      kFn, state, "prompt", prompt, config, callback, user_data, stats,
      [&](const torchchat::GenerationConfig& gen, const auto& sink,
          torchchat::Stats* s) -> tokenizers::Result<void> {
        auto ids = state.runner->GenerateFromIds(built.ids, gen, sink, s, built.images);
        if (!ids.ok()) return tokenizers::MakeError(ids.error());
        return {};
      });
}

torchchat_status torchchat_stats_json(const torchchat_stats* stats, char* buf, size_t cap,
                                      size_t* len) {
  constexpr const char* kFn = "torchchat_stats_json";
  if (stats == nullptr) return NullArgument(kFn, "stats");
  if (len == nullptr) return NullArgument(kFn, "len");
  return Guard(kFn, [&]() -> torchchat_status {
    torchchat::Stats s;
    s.model_load_start_ms = stats->model_load_start_ms;
    s.model_load_end_ms = stats->model_load_end_ms;
    s.inference_start_ms = stats->inference_start_ms;
    s.prompt_eval_end_ms = stats->prompt_eval_end_ms;
    s.first_token_ms = stats->first_token_ms;
    s.inference_end_ms = stats->inference_end_ms;
    s.num_prompt_tokens = stats->num_prompt_tokens;
    s.num_generated_tokens = stats->num_generated_tokens;
    s.peak_rss_bytes = stats->peak_rss_bytes;
    s.stop_reason = torchchat::c_api::StopReasonName(stats->stop_reason);
    return torchchat::c_api::CopyText(s.ToJson(), buf, cap, len);
  });
}

torchchat_status torchchat_chat_create(torchchat_runner* runner, const char* system_prompt,
                                       torchchat_chat** out) {
  constexpr const char* kFn = "torchchat_chat_create";
  if (out == nullptr) return NullArgument(kFn, "out");
  *out = nullptr;
  if (runner == nullptr) return NullArgument(kFn, "runner");
  if (system_prompt != nullptr) {
    if (auto s = CheckText(kFn, "system_prompt", system_prompt); s != TORCHCHAT_OK) return s;
  }
  return Guard(kFn, [&]() -> torchchat_status {
    RunnerState& state = *runner->state;
    auto session = torchchat::ChatSession::Create(state.runner.get(), state.tokenizer.get(),
                                                  state.tokenizer->chat_template(),
                                                  system_prompt ? system_prompt : "");
    if (!session.ok()) return Fail(TORCHCHAT_ERROR_LOAD, std::string(kFn) + ": " + session.error());
    *out = new torchchat_chat{runner->state, std::move(session).value()};
    return Ok();
  });
}

void torchchat_chat_free(torchchat_chat* chat) { delete chat; }

torchchat_status torchchat_chat_turn(torchchat_chat* chat, const char* user_text,
                                     const torchchat_generation_config* config,
                                     torchchat_text_callback callback, void* user_data,
                                     torchchat_stats* stats) {
  constexpr const char* kFn = "torchchat_chat_turn";
  if (chat == nullptr) return NullArgument(kFn, "chat");
  return torchchat::c_api::RunGeneration(
      kFn, *chat->state, "user_text", user_text, config, callback, user_data, stats,
      [&](const torchchat::GenerationConfig& gen, const auto& sink,
          torchchat::Stats* s) -> tokenizers::Result<void> {
        auto reply = chat->session->Turn(user_text, gen, sink, s);
        if (!reply.ok()) return tokenizers::MakeError(reply.error());
        return {};
      },
      &*chat->session);
}

torchchat_status torchchat_chat_turn_with_images(torchchat_chat* chat, const char* user_text,
                                                 const torchchat_image* images, size_t n_images,
                                                 const torchchat_generation_config* config,
                                                 torchchat_text_callback callback, void* user_data,
                                                 torchchat_stats* stats) {
  constexpr const char* kFn = "torchchat_chat_turn_with_images";
  if (chat == nullptr) return NullArgument(kFn, "chat");
  std::vector<torchchat::RgbImage> rgb;
  const torchchat_status checked =
      Guard(kFn, [&]() { return torchchat::c_api::ToRgb(kFn, images, n_images, &rgb); });
  if (checked != TORCHCHAT_OK) return checked;
  return torchchat::c_api::RunGeneration(
      kFn, *chat->state, "user_text", user_text, config, callback, user_data, stats,
      [&](const torchchat::GenerationConfig& gen, const auto& sink,
          torchchat::Stats* s) -> tokenizers::Result<void> {
        auto reply = chat->session->Turn(user_text, gen, sink, s, rgb);
        if (!reply.ok()) return tokenizers::MakeError(reply.error());
        return {};
      },
      &*chat->session);
}

torchchat_status torchchat_chat_reset(torchchat_chat* chat) {
  if (chat == nullptr) return NullArgument("torchchat_chat_reset", "chat");
  chat->session->Reset();
  return Ok();
}

int32_t torchchat_chat_dropped_last_turn(const torchchat_chat* chat) {
  return chat ? chat->session->dropped_last_turn() : -1;
}

torchchat_status torchchat_tokenizer_load(const char* path, torchchat_tokenizer** out) {
  constexpr const char* kFn = "torchchat_tokenizer_load";
  if (out == nullptr) return NullArgument(kFn, "out");
  *out = nullptr;
  if (path == nullptr) return NullArgument(kFn, "path");
  return Guard(kFn, [&]() -> torchchat_status {
    auto tok = tokenizers::LoadTokenizer(path);
    if (!tok.ok()) return Fail(TORCHCHAT_ERROR_LOAD, tok.error());
    *out = new torchchat_tokenizer{std::move(tok).value()};
    return Ok();
  });
}

void torchchat_tokenizer_free(torchchat_tokenizer* tokenizer) { delete tokenizer; }

torchchat_status torchchat_tokenizer_encode(const torchchat_tokenizer* tokenizer, const char* text,
                                            size_t len, int add_bos, int32_t* ids, size_t cap,
                                            size_t* n_ids) {
  constexpr const char* kFn = "torchchat_tokenizer_encode";
  if (tokenizer == nullptr) return NullArgument(kFn, "tokenizer");
  if (n_ids == nullptr) return NullArgument(kFn, "n_ids");
  if (text == nullptr && len > 0) return NullArgument(kFn, "text");
  const std::string_view view(text ? text : "", len);
  if (const size_t bad = tokenizers::FindInvalidUtf8(view); bad != std::string::npos) {
    return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT,
                std::string(kFn) + ": text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  return Guard(kFn, [&]() -> torchchat_status {
    auto encoded = tokenizer->tokenizer->Encode(view, add_bos != 0);
    if (!encoded.ok()) {
      return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(kFn) + ": " + encoded.error());
    }
    return torchchat::c_api::CopyIds(*encoded, ids, cap, n_ids);
  });
}

torchchat_status torchchat_tokenizer_decode(const torchchat_tokenizer* tokenizer,
                                            const int32_t* ids, size_t n_ids, char* buf, size_t cap,
                                            size_t* len) {
  constexpr const char* kFn = "torchchat_tokenizer_decode";
  if (tokenizer == nullptr) return NullArgument(kFn, "tokenizer");
  if (len == nullptr) return NullArgument(kFn, "len");
  if (ids == nullptr && n_ids > 0) return NullArgument(kFn, "ids");
  return Guard(kFn, [&]() -> torchchat_status {
    const tokenizers::Tokenizer& tok = *tokenizer->tokenizer;
    for (size_t i = 0; i < n_ids; ++i) {
      if (ids[i] < 0 || ids[i] >= tok.vocab_size()) {
        return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT,
                    std::string(kFn) + ": ids[" + std::to_string(i) +
                        "] = " + std::to_string(ids[i]) + " is outside the vocabulary of " +
                        std::to_string(tok.vocab_size()));
      }
    }
    auto text = tok.Decode(std::vector<int>(ids, ids + n_ids));
    if (!text.ok())
      return Fail(TORCHCHAT_ERROR_INVALID_ARGUMENT, std::string(kFn) + ": " + text.error());
    return torchchat::c_api::CopyText(*text, buf, cap, len);
  });
}

int32_t torchchat_tokenizer_vocab_size(const torchchat_tokenizer* tokenizer) {
  return tokenizer ? tokenizer->tokenizer->vocab_size() : -1;
}

int32_t torchchat_tokenizer_bos_id(const torchchat_tokenizer* tokenizer) {
  return tokenizer ? tokenizer->tokenizer->bos_id() : -1;
}

torchchat_status torchchat_tokenizer_eos_ids(const torchchat_tokenizer* tokenizer, int32_t* ids,
                                             size_t cap, size_t* n_ids) {
  constexpr const char* kFn = "torchchat_tokenizer_eos_ids";
  if (tokenizer == nullptr) return NullArgument(kFn, "tokenizer");
  if (n_ids == nullptr) return NullArgument(kFn, "n_ids");
  return torchchat::c_api::CopyIds(tokenizer->tokenizer->eos_ids(), ids, cap, n_ids);
}

}  // extern "C"
