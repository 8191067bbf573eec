// Images for a program with a vision tower: reading them, and placing their
// soft tokens in a prompt as torchchat.vision does in eager (with_markers,
// expand_images, image_runs) and torchchat.vision_smolvlm for SmolVLM.
//
// The runners link no image library: an image is a binary PPM (P6, maxval
// 255), which Pillow writes (`Image.open(x).convert("RGB").save("x.ppm")`).
// Gemma 3's is at the vision tower's own size (resizing is the caller's);
// SmolVLM's is any size, resized and tiled here as its processor does with
// Pillow (resample.h, to the byte).
#ifndef RUNNER_COMMON_IMAGE_H_
#define RUNNER_COMMON_IMAGE_H_

#include <cstdint>
#include <string>
#include <utility>
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

// An image as its vision encoder's inputs: one tile [3, S, S] (Gemma 3:
// ImagePixels), or SmolVLM's tiles row by row and the whole image last.
struct ImageTiles {
  int64_t width = 0;  // the image's own size, which decides its layout
  int64_t height = 0;
  std::vector<std::vector<uint8_t>> tiles;
};
Result<ImageTiles> TileImage(const RgbImage& image, const VisionMetadata& v,
                             const std::string& name);

// (rows, cols) of tiles SmolVLM's processor splits an image of
// width x height into; (0, 0) when it stays one tile.
std::pair<int64_t, int64_t> TileGrid(int64_t width, int64_t height, const VisionMetadata& v);

// Refuses a program without a vision encoder; `model` names it.
Result<void> CheckVision(const VisionMetadata& v, const std::string& model);

// A plain prompt with a begin-of-image marker per image: where the prompt
// writes them (as many as there are images), else all before its text.
Result<std::string> WithMarkers(const std::string& prompt, size_t n_images,
                                const tokenizers::Tokenizer& tokenizer, const VisionMetadata& v);

// Each image marker in `text` (a plain prompt, or a rendered chat)
// expanded to the image's soft tokens, as the family's processor expands
// it; `images` are the images in order (SmolVLM's layout is their size's).
Result<std::string> ExpandMarkers(const std::string& text, const tokenizers::Tokenizer& tokenizer,
                                  const VisionMetadata& v, const std::vector<ImageTiles>& images);

// The start of each run of soft tokens in `ids`; each run must be exactly
// image_tokens long.
Result<std::vector<int64_t>> ImageRuns(const std::vector<int64_t>& ids, const VisionMetadata& v);

// The prompt's images: their tiles, in order, at its soft-token runs, one
// each; a count that differs is an error.
Result<std::vector<PromptImage>> PlaceImages(const std::vector<int64_t>& ids,
                                             const std::vector<ImageTiles>& images,
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
