// Which instruction set the Q4 and Q8_0 kernels (q4_linear.cc,
// q8_linear.cc) run, and the few SIMD helpers both formats share. Internal
// to //kernels: the public steering is Q4Isa() / Q4ForceIsa().
//
// One path serves both formats, picked once from cpuid (or
// TORCHCHAT_Q4_ISA), so a model's Q4 layers and its Q8_0 output always run
// the same arithmetic: "avx512vnni" rounds decode activations to int16 in
// both, "avx512" keeps them fp32 in both.
#pragma once

#include <cstdint>

#include "kernels/tile_gemm.h"

// Fixed-count loops over accumulator arrays must be fully unrolled, or gcc -O2
// keeps the accumulators in memory and every FMA waits on a store-forward.
#define TC_UNROLL _Pragma("GCC unroll 16")

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TC_Q4_X86 1
#define TC_TARGET(s) __attribute__((target(s)))
#define TC_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"
#else
#define TC_Q4_X86 0
#endif
// NEON and fp16 <-> fp32 conversion are baseline on AArch64: no dispatch.
#if defined(__aarch64__)
#include <arm_neon.h>
#define TC_Q4_ARM 1
#else
#define TC_Q4_ARM 0
#endif

namespace torchchat::kernels::isa {

enum class Path { kScalar, kAvx2, kAvx512, kAvx512Vnni, kNeon };

// The path both formats' kernels run now.
Path Active();
const char* Name(Path p);
// Sets Active() to the path named ("" or nullptr: the default again). False,
// and nothing changes, if the name is unknown or this CPU cannot run it.
bool Force(const char* name);
// The fp32 tile micro-kernels of a path (prefill); nullptr for "scalar".
const tile::MicroFn* Micro(Path p);

// The decode kernels prefetch the weight rows kPf groups ahead: one call
// reads a few hundred KB, too little for the hardware prefetcher to ramp up
// (measured: 2x the bandwidth of the same kernel without it).
constexpr int kPf = 4;

// x[m, k] with each row zero padded to kp (a whole number of blocks), in
// this thread's scratch, valid until the next call on the thread; x itself
// when kp == k. Both formats' kernels read x in whole blocks.
const float* PadToBlocks(const float* x, int64_t m, int64_t k, int64_t kp);

// Rounds x[nb*32] to int16 per block of 32 into out (natural order, nb*32)
// and the block scales into sc[nb] (scale s = max|x|/32767; error <= s/2
// per element). False if a block is not finite or so small that 32767/max
// overflows: the caller then runs the float kernels. Runs on "avx512vnni"
// only (elsewhere it returns false).
bool QuantizeX16(const float* x, int64_t nb, int16_t* out, float* sc);

#if TC_Q4_X86
TC_TARGET("avx2,fma,f16c") inline float HsumAvx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// gcc 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its own header.
TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c") inline float HsumAvx512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return HsumAvx2(h);
}

#endif

#if TC_Q4_ARM
inline float Fp16Neon(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

inline void LoadBlockX(const float* xb, float32x4_t x[8]) {
  TC_UNROLL
  for (int j = 0; j < 8; ++j) x[j] = vld1q_f32(xb + 4 * j);
}
#endif

}  // namespace torchchat::kernels::isa
