// Images for a program with a vision tower: reading them, and placing their
// soft tokens in a prompt as torchchat.vision does in eager (with_markers,
// expand_images, image_runs).
//
// The runners link no image library: an image is a binary PPM (P6, maxval
// 255), which Pillow writes (`Image.open(x).convert("RGB").save("x.ppm")`),
// at the vision tower's own size; resizing is the caller's, as the
// processor's resampling is Pillow's.
#ifndef RUNNER_COMMON_IMAGE_H_
#define RUNNER_COMMON_IMAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "runner/common/model.h"
#include "runner/common/text_llm_runner.h"
#include "tokenizers/result.h"
#include "tokenizers/tokenizer.h"

namespace torchchat {

struct RgbImage {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb;  // height x width x 3
};

// Parses a binary PPM; the error names `name` and says what is wrong.
Result<RgbImage> ParsePpm(const std::string& data, const std::string& name);
Result<RgbImage> ReadPpm(const std::string& path);

// The vision encoder's input, [3, S, S], for an image of exactly S x S.
Result<std::vector<uint8_t>> ImagePixels(const RgbImage& image, const VisionMetadata& v,
                                         const std::string& name);

// Refuses a program without a vision encoder; `model` names it.
Result<void> CheckVision(const VisionMetadata& v, const std::string& model);

// A plain prompt with a begin-of-image marker per image: where the prompt
// writes them (as many as there are images), else all before its text.
Result<std::string> WithMarkers(const std::string& prompt, size_t n_images,
                                const tokenizers::Tokenizer& tokenizer, const VisionMetadata& v);

// Each begin-of-image marker in `text` (a plain prompt, or a rendered chat)
// expanded to the image's soft tokens, as Gemma 3's processor expands it.
Result<std::string> ExpandMarkers(const std::string& text, const tokenizers::Tokenizer& tokenizer,
                                  const VisionMetadata& v);

// The start of each run of soft tokens in `ids`; each run must be exactly
// image_tokens long.
Result<std::vector<int64_t>> ImageRuns(const std::vector<int64_t>& ids, const VisionMetadata& v);

// The prompt's images: `pixels` (ImagePixels, in order) at its soft-token
// runs, one each; a count that differs is an error.
Result<std::vector<PromptImage>> PlaceImages(const std::vector<int64_t>& ids,
                                             const std::vector<std::vector<uint8_t>>& pixels,
                                             const VisionMetadata& v);

// A plain prompt (no chat template; bos where the tokenizer says) with
// `images` in it, as et_run --image and the C API run it: the ids and each
// image's place. `names` name the images in errors; `model` names the
// program when it has no vision encoder.
struct ImagePrompt {
  std::vector<int64_t> ids;
  std::vector<PromptImage> images;
};
Result<ImagePrompt> BuildImagePrompt(const std::string& prompt, const std::vector<RgbImage>& images,
                                     const std::vector<std::string>& names,
                                     const tokenizers::Tokenizer& tokenizer,
                                     const VisionMetadata& v, const std::string& model);

}  // namespace torchchat

#endif  // RUNNER_COMMON_IMAGE_H_
