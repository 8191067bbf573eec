#include "kernels/tile_gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TC_TILE_X86 1
#else
#define TC_TILE_X86 0
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

// Fixed-count loops over accumulator arrays must be fully unrolled, or gcc -O2
// keeps the accumulators in memory and every FMA waits on a store-forward.
#define TC_UNROLL _Pragma("GCC unroll 16")

namespace torchchat::kernels::tile {
namespace {

#if TC_TILE_X86
__attribute__((target("avx2,fma"))) inline float HsumAvx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MR>
__attribute__((target("avx2,fma"))) void Avx2(const float* x, int64_t ldx, const float* wt,
                                              int64_t kp, int nr, float* out, int64_t ldo) {
  __m256 acc[MR][kNR];
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < kNR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kp; k += 8) {
    __m256 wv[kNR];
    TC_UNROLL
    for (int j = 0; j < kNR; ++j) wv[j] = _mm256_loadu_ps(wt + j * kp + k);
    TC_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      TC_UNROLL
      for (int j = 0; j < kNR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < nr; ++j) out[i * ldo + j] = HsumAvx2(acc[i][j]);
}

// gcc 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its own header.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline float HsumAvx512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return HsumAvx2(h);
}

template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void Avx512(const float* x, int64_t ldx,
                                                                     const float* wt, int64_t kp,
                                                                     int nr, float* out,
                                                                     int64_t ldo) {
  __m512 acc[MR][kNR];
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; k += 16) {
    __m512 wv[kNR];
    TC_UNROLL
    for (int j = 0; j < kNR; ++j) wv[j] = _mm512_loadu_ps(wt + j * kp + k);
    TC_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
      TC_UNROLL
      for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < nr; ++j) out[i * ldo + j] = HsumAvx512(acc[i][j]);
}

constexpr MicroFn kAvx2[5] = {nullptr, Avx2<1>, Avx2<2>, Avx2<3>, Avx2<4>};
constexpr MicroFn kAvx512[5] = {nullptr, Avx512<1>, Avx512<2>, Avx512<3>, Avx512<4>};
#endif  // TC_TILE_X86

#if defined(__aarch64__)
template <int MR>
void Neon(const float* x, int64_t ldx, const float* wt, int64_t kp, int nr, float* out,
          int64_t ldo) {
  float32x4_t acc[MR][kNR];
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < kNR; ++j) acc[i][j] = vdupq_n_f32(0.f);
  for (int64_t k = 0; k < kp; k += 4) {
    float32x4_t wv[kNR];
    TC_UNROLL
    for (int j = 0; j < kNR; ++j) wv[j] = vld1q_f32(wt + j * kp + k);
    TC_UNROLL
    for (int i = 0; i < MR; ++i) {
      const float32x4_t xv = vld1q_f32(x + i * ldx + k);
      TC_UNROLL
      for (int j = 0; j < kNR; ++j) acc[i][j] = vfmaq_f32(acc[i][j], xv, wv[j]);
    }
  }
  TC_UNROLL
  for (int i = 0; i < MR; ++i) TC_UNROLL
  for (int j = 0; j < nr; ++j) out[i * ldo + j] = vaddvq_f32(acc[i][j]);
}

constexpr MicroFn kNeon[5] = {nullptr, Neon<1>, Neon<2>, Neon<3>, Neon<4>};
#endif

}  // namespace

const MicroFn* MicroAvx2() {
#if TC_TILE_X86
  return kAvx2;
#else
  return nullptr;
#endif
}

const MicroFn* MicroAvx512() {
#if TC_TILE_X86
  return kAvx512;
#else
  return nullptr;
#endif
}

const MicroFn* MicroNeon() {
#if defined(__aarch64__)
  return kNeon;
#else
  return nullptr;
#endif
}

}  // namespace torchchat::kernels::tile
