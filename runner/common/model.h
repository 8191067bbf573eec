// The one thing a runner backend provides: a model that turns token ids at
// given positions into next-token logits. aoti_run and et_run each implement
// it in one small file; everything else (tokenizing, sampling, stopping,
// streaming, stats) is shared in TextLLMRunner.
#ifndef RUNNER_COMMON_MODEL_H_
#define RUNNER_COMMON_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tokenizers/result.h"

namespace torchchat {

using tokenizers::Result;

// What the exported artifact says about itself (.pte constant methods, or
// the .pt2 package metadata).
struct ModelMetadata {
  int64_t max_seq_len = 0;  // positions the KV cache holds
  int64_t vocab_size = 0;
  // Stop ids; the tokenizer's bos decides what a prompt starts with.
  std::vector<int64_t> eos_ids;
  // Longest token run a single prefill call accepts (<= max_seq_len); 1 for
  // a static-shape program.
  int64_t max_prefill_chunk = 1;
  std::string tokenizer_file;  // name beside the artifact, if recorded
};

class LLMModel {
 public:
  virtual ~LLMModel() = default;
  virtual const ModelMetadata& metadata() const = 0;
  // Runs `tokens` at positions start_pos, start_pos+1, ... and returns the
  // logits for the last one. The returned view stays valid until the next
  // call; implementations reuse one buffer, so decode allocates nothing.
  virtual Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) = 0;
};

// Loads an artifact; each backend provides one (LoadEtModel, LoadAotiModel).
using ModelLoader =
    std::function<Result<std::unique_ptr<LLMModel>>(const std::string& path, int num_threads)>;

}  // namespace torchchat

#endif  // RUNNER_COMMON_MODEL_H_
