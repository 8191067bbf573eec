#include "runner/common/resample.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace torchchat {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // room for negative lobes and overshoot
constexpr double kPi = 3.14159265358979323846;

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= kPi;
  return std::sin(x) / x;
}

double Filter(Resample f, double x) {
  switch (f) {
    case Resample::kLanczos:
      return (-3.0 <= x && x < 3.0) ? Sinc(x) * Sinc(x / 3) : 0.0;
    case Resample::kBilinear:
      x = std::fabs(x);
      return x < 1.0 ? 1.0 - x : 0.0;
    case Resample::kBicubic: {
      constexpr double a = -0.5;
      x = std::fabs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    }
  }
  return 0.0;
}

double Support(Resample f) {
  switch (f) {
    case Resample::kLanczos:
      return 3.0;
    case Resample::kBilinear:
      return 1.0;
    case Resample::kBicubic:
      return 2.0;
  }
  return 1.0;
}

// One axis's weights: for output i, inputs first[i] .. first[i] + count[i] - 1
// with fixed-point weights w[i * span ...].
struct Taps {
  int span = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;
};

Taps Coefficients(int in_size, int out_size, Resample f) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = Support(f) * filter_scale;
  const double inv = 1.0 / filter_scale;  // Pillow multiplies by it: so must we, to the bit
  Taps t;
  t.span = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.w.assign(static_cast<size_t>(out_size) * t.span, 0);
  std::vector<double> k(t.span);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = hi - lo;
    double sum = 0.0;
    for (int x = 0; x < n; ++x) {
      k[x] = Filter(f, (x + lo - center + 0.5) * inv);
      sum += k[x];
    }
    for (int x = 0; x < n; ++x) {
      const double v = (sum != 0.0 ? k[x] / sum : k[x]) * (1 << kPrecisionBits);
      t.w[static_cast<size_t>(i) * t.span + x] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
    }
    t.first[i] = lo;
    t.count[i] = n;
  }
  return t;
}

uint8_t Clip8(int32_t acc) {
  return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

}  // namespace

bool KnownResample(int64_t value) { return value >= 1 && value <= 3; }

std::vector<uint8_t> ResizeRgb(const std::vector<uint8_t>& rgb, int64_t width, int64_t height,
                               int64_t out_w, int64_t out_h, Resample filter) {
  if (width == out_w && height == out_h) return rgb;
  const int w = static_cast<int>(width), h = static_cast<int>(height);
  const int ow = static_cast<int>(out_w), oh = static_cast<int>(out_h);
  const Taps rows = Coefficients(h, oh, filter);
  // The horizontal pass covers only the rows the vertical one reads.
  const int top = rows.first[0];
  const int bottom = rows.first[oh - 1] + rows.count[oh - 1];
  std::vector<uint8_t> mid;
  const uint8_t* src = rgb.data();
  int mid_w = w, mid_top = 0;
  if (ow != w) {
    const Taps cols = Coefficients(w, ow, filter);
    mid.resize(static_cast<size_t>(bottom - top) * ow * 3);
    for (int y = top; y < bottom; ++y) {
      const uint8_t* row = src + static_cast<size_t>(y) * w * 3;
      uint8_t* out = mid.data() + static_cast<size_t>(y - top) * ow * 3;
      for (int x = 0; x < ow; ++x) {
        const int32_t* k = &cols.w[static_cast<size_t>(x) * cols.span];
        for (int c = 0; c < 3; ++c) {
          int32_t acc = 1 << (kPrecisionBits - 1);
          for (int i = 0; i < cols.count[x]; ++i) acc += row[(cols.first[x] + i) * 3 + c] * k[i];
          out[x * 3 + c] = Clip8(acc);
        }
      }
    }
    src = mid.data();
    mid_w = ow;
    mid_top = top;
  }
  if (oh == h) {
    if (mid.empty()) return rgb;
    return mid;
  }
  std::vector<uint8_t> out(static_cast<size_t>(oh) * ow * 3);
  for (int y = 0; y < oh; ++y) {
    const int32_t* k = &rows.w[static_cast<size_t>(y) * rows.span];
    for (int x = 0; x < mid_w * 3; ++x) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int i = 0; i < rows.count[y]; ++i) {
        acc += src[static_cast<size_t>(rows.first[y] - mid_top + i) * mid_w * 3 + x] * k[i];
      }
      out[static_cast<size_t>(y) * ow * 3 + x] = Clip8(acc);
    }
  }
  return out;
}

}  // namespace torchchat
