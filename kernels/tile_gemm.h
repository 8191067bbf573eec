// The prefill half of the weight-only linears: y = x @ W^T for many rows of
// x, with W dequantized to fp32 a few rows at a time (a tile) and multiplied
// by register-blocked fp32 micro-kernels. The dequantization is paid once per
// weight row instead of once per (row of x, weight row), and the products are
// exact float products of the dequantized weights.
//
// Shared by the q4/q8 kernels (q4_linear.cc) and the GGUF block formats
// (ggml/linear.cc); each supplies its own row dequantizer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace torchchat::kernels::tile {

// Weight rows per tile.
inline constexpr int kNR = 4;

// out[i * ldo + j] = dot(x[i * ldx : +kp], wt[j * kp : +kp]) for i < MR
// (the table index), j < nr <= kNR. kp is a multiple of 32.
using MicroFn = void (*)(const float* x, int64_t ldx, const float* wt, int64_t kp, int nr,
                         float* out, int64_t ldo);

// Micro-kernels by MR (1..4; entry 0 unused), for one instruction set each;
// nullptr where this build or CPU has none (the caller then runs scalar code).
const MicroFn* MicroAvx2();
const MicroFn* MicroAvx512();
const MicroFn* MicroNeon();

// Rows [n0, n1) of y[m, n_out] = x[m, kp] @ W^T (+ bias). dequant(row, out)
// writes weight row `row` as kp floats.
template <class Dequant>
void TileRows(const MicroFn* micro, Dequant&& dequant, const float* x, int64_t m, int64_t kp,
              int64_t n_out, const float* bias, float* y, int64_t n0, int64_t n1) {
  thread_local std::vector<float> wt;
  wt.assign(size_t(kNR * kp), 0.f);
  float out[4 * kNR];
  for (int64_t n = n0; n < n1; n += kNR) {
    const int nr = int(std::min<int64_t>(kNR, n1 - n));
    for (int j = 0; j < nr; ++j) dequant(n + j, wt.data() + j * kp);
    for (int64_t i = 0; i < m; i += 4) {
      const int mr = int(std::min<int64_t>(4, m - i));
      micro[mr](x + i * kp, kp, wt.data(), kp, nr, out, kNR);
      for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nr; ++j)
          y[(i + r) * n_out + n + j] = out[r * kNR + j] + (bias ? bias[n + j] : 0.f);
    }
  }
}

}  // namespace torchchat::kernels::tile
