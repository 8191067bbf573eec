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

// A program's vision tower (its vision_encoder): what its images take.
// image_size 0: the program has none.
struct VisionMetadata {
  int64_t image_size = 0;    // pixels per side, RGB: one tile
  int64_t image_tokens = 0;  // soft tokens a tile becomes
  int64_t boi_id = -1;       // the marker a prompt writes, end-of-image, soft token
  int64_t eoi_id = -1;
  int64_t image_id = -1;
  // 0: Gemma 3's layout, an image is one tile of image_size, given at that
  // size. Else SmolVLM's (Idefics3): any image, resized (with Pillow's
  // `resample` filter) to this longest side, split into tiles when `split`,
  // and the whole image as the last tile; each tile's soft tokens attend
  // causally.
  int64_t longest_edge = 0;
  int64_t split = 0;
  int64_t resample = 0;
};

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
  VisionMetadata vision;
};

class LLMModel {
 public:
  virtual ~LLMModel() = default;
  virtual const ModelMetadata& metadata() const = 0;
  // Runs `tokens` at positions start_pos, start_pos+1, ... and returns the
  // logits for the last one. The returned view stays valid until the next
  // call; implementations reuse one buffer, so decode allocates nothing.
  virtual Result<const float*> Forward(const std::vector<int64_t>& tokens, int64_t start_pos) = 0;
  // Runs one tile (uint8 RGB, [3, S, S] with S = vision.image_size) as its
  // vision.image_tokens soft tokens at positions start_pos, ..., which
  // attend to one another both ways (Gemma 3) or causally (SmolVLM), as the
  // program's image_decoder says; returns the last one's logits.
  virtual Result<const float*> ForwardImage(const std::vector<uint8_t>& /*pixels*/,
                                            int64_t /*start_pos*/) {
    return tokenizers::MakeError("this model has no vision encoder");
  }
};

// Loads an artifact; each backend provides one (LoadEtModel, LoadAotiModel).
using ModelLoader =
    std::function<Result<std::unique_ptr<LLMModel>>(const std::string& path, int num_threads)>;

}  // namespace torchchat

#endif  // RUNNER_COMMON_MODEL_H_
