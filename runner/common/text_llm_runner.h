// TextLLMRunner: the generation loop both C++ runners share. It plays the
// role of ExecuTorch's extension/llm TextLLMRunner, over any LLMModel.
#ifndef RUNNER_COMMON_TEXT_LLM_RUNNER_H_
#define RUNNER_COMMON_TEXT_LLM_RUNNER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runner/common/model.h"
#include "runner/common/stats.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {

struct GenerationConfig {
  int64_t max_new_tokens = 128;
  // Prepend bos where the tokenizer says prompts take one (off when a chat
  // template already writes it as text).
  bool bos = true;
};

// Picks the next token from logits[0, vocab); `history` is every token so
// far (prompt and generated), for repetition penalties.
using SampleFn = std::function<int64_t(const float* logits, int64_t vocab,
                                       const std::vector<int64_t>& history)>;

int64_t ArgMax(const float* logits, int64_t vocab);

class TextLLMRunner {
 public:
  // Neither pointer is owned; both must outlive the runner.
  TextLLMRunner(LLMModel* model, const tokenizers::Tokenizer* tokenizer,
                SampleFn sample);

  // Checks that the tokenizer fits the model (vocab, special ids).
  Result<void> Validate() const;

  // Generates from `prompt`, calling `on_text` with each piece of text as it
  // completes (never half a UTF-8 character). Positions continue from
  // `start_pos` (the KV cache of earlier turns stays valid), so chat calls it
  // once per turn. Returns the ids generated.
  Result<std::vector<int64_t>> Generate(
      const std::string& prompt, const GenerationConfig& config,
      const std::function<void(const std::string&)>& on_text, Stats* stats,
      int64_t start_pos = 0);

  // Positions used so far (the next call's natural start_pos).
  int64_t position() const { return pos_; }
  int64_t max_seq_len() const { return model_->metadata().max_seq_len; }

 private:
  Result<const float*> Prefill(const std::vector<int64_t>& tokens,
                               int64_t start_pos);

  LLMModel* model_;
  const tokenizers::Tokenizer* tokenizer_;
  SampleFn sample_;
  int64_t pos_ = 0;
};

}  // namespace torchchat

#endif  // RUNNER_COMMON_TEXT_LLM_RUNNER_H_
