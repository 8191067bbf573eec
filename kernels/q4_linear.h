// Weight-only 4-bit linear for GGUF Q4_0 / Q4_1 weights, float activations.
//
// Packed layout of a weight W[N, K] (nb = ceil(K / 32) blocks per row):
//   qs     uint8  [N, nb, 16]  the 32 codes of a block, byte j holding
//                              q[j] (low nibble) and q[j + 16] (high nibble)
//                              -- GGUF's own order, so packing is a copy and
//                              SIMD unpacking is one AND and one shift.
//   scales fp16   [N, 2, nb]   row n: nb scales d, then nb mins m.
// Weight k of row n is d*q + m with d, m widened exactly from fp16 to fp32
// (Q4_0: m = -8d, exact in fp16 unless |8d| overflows; packers reject that).
// When K % 32 != 0 the last block has codes past K; they are never used
// (x is zero-padded to nb*32 inside the kernel).
//
// The kernel computes, per block, d*(q.x) + m*sum(x): the per-block sums of
// x are computed once per call, so the inner loop is unpack + FMA.
//
// Two ways to compute q.x, picked per CPU (Q4Isa()):
//  - exact ("avx512", "avx2", "neon" on aarch64, "scalar"): x stays fp32;
//    the result equals a float matmul with the dequantized weights up to
//    summation order.
//  - "avx512vnni", decode only (M < 8, for Q8_0 too): x is rounded to
//    int16 per block of 32 (error <= max|x_block| / 65534 per element) and
//    q.x is an exact integer dot product (vpdpwssd). The weights are still
//    exactly d*q + m, and m*sum(x) uses the fp32 sums. Decode 10-20% faster;
//    TORCHCHAT_Q4_ISA=avx512 in the environment keeps the exact path.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/fp16.h"
#include "kernels/parallel_for.h"

namespace torchchat::kernels {

inline constexpr int64_t kQ4Block = 32;

inline int64_t Q4NumBlocks(int64_t k) { return (k + kQ4Block - 1) / kQ4Block; }

struct Q4Weight {
  const uint8_t* qs = nullptr;       // [N, nb, 16]
  const uint16_t* scales = nullptr;  // [N, 2, nb] fp16 bits
  int64_t n = 0;
  int64_t k = 0;
};

// y[M, N] = x[M, K] @ W^T (+ bias[N]). x, y row-major and contiguous; bias may
// be nullptr. Scratch is allocated internally (a few KB per thread for
// decode, proportional to M*K/32 for the x block sums).
void Q4Linear(const float* x, int64_t m, const Q4Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf = nullptr);

// Which path the dispatcher picked, for these kernels and Q8Linear's
// (q8_linear.h) alike: "avx512vnni", "avx512", "avx2", "neon", "scalar"
// (the best this CPU runs, unless TORCHCHAT_Q4_ISA names another).
const char* Q4Isa();
// Forces a path for tests/benchmarks (a name above, or "" for the default).
// Returns false if this CPU cannot run it.
bool Q4ForceIsa(const char* isa);

// Dequantizes W to fp32 [N, K] (reference for tests, fallback for others).
void Q4Dequantize(const Q4Weight& w, float* out);

// Packs GGUF raw blocks (ggml type 2 = Q4_0, 18 bytes/block; 3 = Q4_1, 20
// bytes/block) of an [N, K] tensor, K % 32 == 0, into qs/scales. Returns
// nullptr on success or a static error message.
const char* Q4PackGguf(int ggml_type, const uint8_t* raw, int64_t n, int64_t k, uint8_t* qs,
                       uint16_t* scales);

}  // namespace torchchat::kernels
