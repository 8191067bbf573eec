// Timing and token counts of one generation, with the field names of
// ExecuTorch's extension/llm Stats so tools can read either.
#ifndef RUNNER_COMMON_STATS_H_
#define RUNNER_COMMON_STATS_H_

#include <cstdint>
#include <string>

namespace torchchat {

// Why a generation ended: a stop token, the token budget, a full context,
// a stop request (TextLLMRunner::Stop, a callback, a stop string), or Ctrl-C.
// Python's torchchat.generate uses the same words (//runner:contract_test).
inline constexpr const char* kStopReasons[] = {"eos", "max_new_tokens", "context", "stopped",
                                               "interrupted"};

struct Stats {
  // Milliseconds since an arbitrary epoch (steady clock), with a fraction:
  // a small model decodes a token in well under a millisecond.
  double model_load_start_ms = 0;
  double model_load_end_ms = 0;
  double inference_start_ms = 0;
  double prompt_eval_end_ms = 0;
  double first_token_ms = 0;
  double inference_end_ms = 0;
  int64_t num_prompt_tokens = 0;
  int64_t num_generated_tokens = 0;
  // Speculative decoding (Python's generate --speculate; the C++ runners do
  // not speculate, so 0 here): ids drafted, and the ones the model kept.
  int64_t num_draft_tokens = 0;
  int64_t num_accepted_tokens = 0;
  int64_t peak_rss_bytes = 0;
  // Ours, not ExecuTorch's: one of kStopReasons.
  std::string stop_reason;

  double load_s() const { return (model_load_end_ms - model_load_start_ms) / 1e3; }
  double ttft_s() const { return (first_token_ms - inference_start_ms) / 1e3; }
  double prefill_tok_s() const;
  double decode_tok_s() const;

  // One line for humans, and the JSON that --stats-json writes.
  std::string Summary() const;
  std::string ToJson() const;
};

double NowMs();
int64_t PeakRssBytes();

}  // namespace torchchat

#endif  // RUNNER_COMMON_STATS_H_
