// TextLLMRunner: the generation loop both C++ runners share. It plays the
// role of ExecuTorch's extension/llm TextLLMRunner, over any LLMModel.
#ifndef RUNNER_COMMON_TEXT_LLM_RUNNER_H_
#define RUNNER_COMMON_TEXT_LLM_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
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

// An image in a prompt: its pixels ([3, S, S], LLMModel::ForwardImage) run
// as the run of soft tokens that starts at `start`.
struct PromptImage {
  int64_t start = 0;
  std::vector<uint8_t> pixels;
};

// Picks the next token from logits[0, vocab); `history` is every token so
// far (prompt and generated). The sampler applies its own repetition window.
using SampleFn = std::function<Result<int64_t>(const float* logits, int64_t vocab,
                                               const std::vector<int64_t>& history)>;

int64_t ArgMax(const float* logits, int64_t vocab);

// Checks that a tokenizer belongs with a model: its ids fit the vocabulary.
Result<void> ValidateTokenizer(const ModelMetadata& md, const tokenizers::Tokenizer& tokenizer);

// Why the last Generate call failed, for callers that map errors to codes
// (the C API); the message says the rest.
enum class Failure { kNone, kInput, kContext, kModel };

class TextLLMRunner {
 public:
  // Neither pointer is owned; both must outlive the runner.
  TextLLMRunner(LLMModel* model, const tokenizers::Tokenizer* tokenizer, SampleFn sample);
  TextLLMRunner(const TextLLMRunner&) = delete;
  TextLLMRunner& operator=(const TextLLMRunner&) = delete;

  // Replaces the sampler for the next calls (one per request, when each
  // request brings its own settings and seed).
  void set_sample(SampleFn sample) { sample_ = std::move(sample); }

  // Generates from `prompt`, calling `on_text` with each piece of text as it
  // completes (never half a UTF-8 character) and never with a stop token's.
  // Returns the ids sampled, a final stop id included.
  Result<std::vector<int64_t>> Generate(const std::string& prompt, const GenerationConfig& config,
                                        const std::function<void(const std::string&)>& on_text,
                                        Stats* stats);

  // The same from token ids. The runner remembers which tokens sit in the KV
  // cache, so a prompt that extends them (the next chat turn) prefills only
  // its new suffix; a prompt that diverges rewrites the cache from there.
  // `images` fill the prompt's soft-token runs (ImageRuns). Every image's
  // soft tokens have the same id, so the cache counts an image as shared
  // only where it holds the same pixels at the same place (a chat's earlier
  // images, sent again with each turn), and keeps or reruns it whole.
  Result<std::vector<int64_t>> GenerateFromIds(
      const std::vector<int64_t>& prompt, const GenerationConfig& config,
      const std::function<void(const std::string&)>& on_text, Stats* stats,
      const std::vector<PromptImage>& images = {});

  // Ends the running generation after the token being streamed, with
  // stop_reason "stopped"; callable from on_text or from another thread, as
  // ExecuTorch's TextLLMRunner::stop(). Each Generate call clears it.
  void Stop() { stop_requested_.store(true, std::memory_order_relaxed); }
  Failure last_failure() const { return failure_; }

  // Forgets the cached tokens: the next call prefills from position 0.
  void Reset() {
    cached_.clear();
    cached_images_.clear();
  }
  // Tokens whose K/V are in the cache.
  const std::vector<int64_t>& cached() const { return cached_; }
  int64_t max_seq_len() const { return model_->metadata().max_seq_len; }
  const ModelMetadata& metadata() const { return model_->metadata(); }

 private:
  Result<const float*> Prefill(const std::vector<int64_t>& tokens, size_t from,
                               const std::vector<PromptImage>& images);
  size_t Reusable(const std::vector<int64_t>& prompt, const std::vector<PromptImage>& images) const;

  LLMModel* model_;
  const tokenizers::Tokenizer* tokenizer_;
  SampleFn sample_;
  std::vector<int64_t> cached_;
  std::vector<PromptImage> cached_images_;  // the images whose tokens cached_ holds
  std::atomic<bool> stop_requested_{false};
  Failure failure_ = Failure::kNone;
};

}  // namespace torchchat

#endif  // RUNNER_COMMON_TEXT_LLM_RUNNER_H_
