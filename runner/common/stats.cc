#include "runner/common/stats.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>

namespace torchchat {

double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t PeakRssBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

double Stats::prefill_tok_s() const {
  const double ms = prompt_eval_end_ms - inference_start_ms;
  return ms > 0 ? num_prompt_tokens * 1e3 / ms : 0.0;
}

double Stats::decode_tok_s() const {
  // The first generated token comes from prefill; decode covers the rest.
  const double ms = inference_end_ms - first_token_ms;
  const int64_t n = num_generated_tokens - 1;
  return (ms > 0 && n > 0) ? n * 1e3 / ms : 0.0;
}

std::string Stats::Summary() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "load %.2f s, ttft %.3f s, prefill %lld tok at %.1f tok/s, "
                "decode %lld tok at %.1f tok/s, peak rss %.0f MiB, stop %s",
                load_s(), ttft_s(), static_cast<long long>(num_prompt_tokens), prefill_tok_s(),
                static_cast<long long>(num_generated_tokens), decode_tok_s(),
                peak_rss_bytes / 1048576.0, stop_reason.c_str());
  return buf;
}

std::string Stats::ToJson() const {
  char buf[768];
  std::snprintf(buf, sizeof(buf),
                "{\"model_load_start_ms\": %.3f, \"model_load_end_ms\": %.3f, "
                "\"inference_start_ms\": %.3f, \"prompt_eval_end_ms\": %.3f, "
                "\"first_token_ms\": %.3f, \"inference_end_ms\": %.3f, "
                "\"num_prompt_tokens\": %lld, \"num_generated_tokens\": %lld, "
                "\"num_draft_tokens\": %lld, \"num_accepted_tokens\": %lld, "
                "\"peak_rss_bytes\": %lld, \"stop_reason\": \"%s\", \"ttft_s\": %.6f, "
                "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f}",
                model_load_start_ms, model_load_end_ms, inference_start_ms, prompt_eval_end_ms,
                first_token_ms, inference_end_ms, static_cast<long long>(num_prompt_tokens),
                static_cast<long long>(num_generated_tokens),
                static_cast<long long>(num_draft_tokens),
                static_cast<long long>(num_accepted_tokens), static_cast<long long>(peak_rss_bytes),
                stop_reason.c_str(), ttft_s(), prefill_tok_s(), decode_tok_s());
  return buf;
}

}  // namespace torchchat
