// Resizing an RGB image as Pillow's Image.resize does for mode "RGB", to the
// byte: the processors that tile images (SmolVLM's) resize them with Pillow
// before the vision tower sees them, so a runner that resizes otherwise would
// feed the tower other pixels than eager torchchat and transformers do.
//
// Pillow's algorithm: a separable convolution, the horizontal pass first,
// over the rows the vertical pass reads; each output pixel's weights are the
// filter's, stretched by the downscale factor, normalised to sum 1, then
// rounded to 22-bit fixed point; each pass rounds to uint8 and clamps.
// Pillow 13's wheel runs the vertical pass first for some shrinks (a rule
// its released source did not have yet); there a pixel can differ by 1-3
// levels (//export:vision_smolvlm_test measures it).
#ifndef RUNNER_COMMON_RESAMPLE_H_
#define RUNNER_COMMON_RESAMPLE_H_

#include <cstdint>
#include <vector>

namespace torchchat {

// transformers' PILImageResampling values that ResizeRgb takes.
enum class Resample : int64_t { kLanczos = 1, kBilinear = 2, kBicubic = 3 };

// Whether `value` names a filter ResizeRgb has.
bool KnownResample(int64_t value);

// `rgb` (height x width x 3) resized to out_w x out_h; a copy when the size
// is the same, as in Pillow.
std::vector<uint8_t> ResizeRgb(const std::vector<uint8_t>& rgb, int64_t width, int64_t height,
                               int64_t out_w, int64_t out_h, Resample filter);

}  // namespace torchchat

#endif  // RUNNER_COMMON_RESAMPLE_H_
