// Weight-only linear for GGUF Q8_0 weights (a GGUF's usual output and
// embedding type): w = d*q, q int8 per block of 32, d fp16.
//
// Runs on the same path as the Q4 kernels (Q4Isa(), q4_linear.h): fp32 x,
// exact up to summation order, except on "avx512vnni", where decode (M < 32)
// rounds x to int16 per block as Q4Linear does. From 32 rows, dequantized
// tiles (prefill, eval's full logits).
#pragma once

#include <cstdint>

#include "kernels/parallel_for.h"

namespace torchchat::kernels {

inline constexpr int64_t kQ8Block = 32;

inline int64_t Q8NumBlocks(int64_t k) { return (k + kQ8Block - 1) / kQ8Block; }

// Layout: qs int8 [N, nb*32] (K padded to nb*32), scales fp16 [N, nb].
struct Q8Weight {
  const int8_t* qs = nullptr;
  const uint16_t* scales = nullptr;
  int64_t n = 0;
  int64_t k = 0;
};

// y[M, N] = x[M, K] @ W^T (+ bias). Each weight row is read once from memory
// for all M rows of x (it stays in L1 between them).
void Q8Linear(const float* x, int64_t m, const Q8Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf = nullptr);

}  // namespace torchchat::kernels
