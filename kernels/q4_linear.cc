#include "kernels/q4_linear.h"

#include "kernels/tile_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// Fixed-count loops over accumulator arrays must be fully unrolled, or gcc -O2
// keeps the accumulators in memory and every FMA waits on a store-forward.
#define TC_UNROLL _Pragma("GCC unroll 16")

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TC_Q4_X86 1
#define TC_TARGET(s) __attribute__((target(s)))
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

namespace torchchat::kernels {
namespace {

// Blocks per chunk of d/m widened to fp32 on the stack: K up to 2048 in one
// chunk, larger K loops without heap allocation.
constexpr int64_t kChunk = 64;
// At or above this many rows of x, dequantize tiles of W to fp32 and run a
// register-blocked kernel: the dequantization is paid once per weight row
// instead of once per (row of x, weight row).
constexpr int64_t kTileMinM = 8;
// The unembedding (the Q8_0 kernels) runs once per sequence in a step, so
// its M is the number of sequences a server decodes together, not a prompt
// length (only eval's full logits run it per position, at window lengths).
// Its int16 path beats the fp32 one well past 8 rows (q4_bench, 49152x576,
// 2 threads: 5.2 vs 8.7 ms at M = 8, 13 vs 21 ms at M = 16).
constexpr int64_t kQ8Int16MaxM = 32;
// From here Q8_0 runs dequantized tiles, like Q4 from kTileMinM.
constexpr int64_t kQ8TileMinM = kQ8Int16MaxM;
using tile::kNR;  // weight rows per tile
// The decode kernels prefetch the weight rows kPf groups ahead: one call
// reads a few hundred KB, too little for the hardware prefetcher to ramp up
// (measured: 2x the bandwidth of the same kernel without it).
constexpr int kPf = 4;

struct Args {
  const float* x;   // [m, ldx], ldx = nb*32, zero padded beyond K
  const float* xs;  // [m, nb] block sums of x
  int64_t m;
  int64_t ldx;
  const Q4Weight* w;
  const float* bias;
  float* y;
  // The 16-bit activation path only (see XQuant): x rounded per block.
  const int16_t* xq = nullptr;  // [m, ldq]
  const float* xsc = nullptr;   // [m, lds] per-block scales, zero padded
  int64_t ldq = 0, lds = 0;
};

using RowsFn = void (*)(const Args&, int64_t n0, int64_t n1);

// ---------------------------------------------------------------- scalar ---

void WidenScalar(const uint16_t* h, float* f, int64_t n) {
  for (int64_t i = 0; i < n; ++i) f[i] = Fp16ToFp32(h[i]);
}

void DequantRowScalar(const Q4Weight& w, int64_t row, float* out) {
  const int64_t nb = Q4NumBlocks(w.k);
  const uint8_t* qs = w.qs + row * nb * 16;
  const uint16_t* d = w.scales + row * 2 * nb;
  const uint16_t* mn = d + nb;
  for (int64_t b = 0; b < nb; ++b) {
    const float db = Fp16ToFp32(d[b]), mb = Fp16ToFp32(mn[b]);
    for (int j = 0; j < 16; ++j) {
      out[b * 32 + j] = db * float(qs[b * 16 + j] & 0xF) + mb;
      out[b * 32 + j + 16] = db * float(qs[b * 16 + j] >> 4) + mb;
    }
  }
}

void GemvRowsScalar(const Args& a, int64_t n0, int64_t n1) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  float dbuf[kChunk], mbuf[kChunk];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* qs = a.w->qs + n * nb * 16;
    const uint16_t* d = a.w->scales + n * 2 * nb;
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      const float* xs = a.xs + i * nb;
      float acc = 0.f, macc = 0.f;
      for (int64_t c = 0; c < nb; c += kChunk) {
        const int64_t cn = std::min(kChunk, nb - c);
        WidenScalar(d + c, dbuf, cn);
        WidenScalar(d + nb + c, mbuf, cn);
        for (int64_t b = 0; b < cn; ++b) {
          const uint8_t* q = qs + (c + b) * 16;
          const float* xb = x + (c + b) * 32;
          float t = 0.f;
          for (int j = 0; j < 16; ++j)
            t += float(q[j] & 0xF) * xb[j] + float(q[j] >> 4) * xb[j + 16];
          acc += dbuf[b] * t;
          macc += mbuf[b] * xs[c + b];
        }
      }
      a.y[i * a.w->n + n] = acc + macc + (a.bias ? a.bias[n] : 0.f);
    }
  }
}

void TileRowsScalar(const Args& a, int64_t n0, int64_t n1) {
  const int64_t kp = Q4NumBlocks(a.w->k) * 32;
  std::vector<float> wrow(kp);
  for (int64_t n = n0; n < n1; ++n) {
    DequantRowScalar(*a.w, n, wrow.data());
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      float acc = 0.f;
      for (int64_t k = 0; k < kp; ++k) acc += wrow[k] * x[k];
      a.y[i * a.w->n + n] = acc + (a.bias ? a.bias[n] : 0.f);
    }
  }
}

#if TC_Q4_ARM
// ---------------------------------------------------------------- NEON -----
// The AVX2 kernels at 4 lanes: nibble -> float -> FMA, so exact like them
// (equal to a float matmul with the dequantized weights up to summation
// order). No 16-bit activation path: x stays fp32.

inline float32x4_t LoadFp16x4(const uint16_t* h, int64_t n) {
  if (n >= 4) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
  uint16_t tmp[4] = {};
  std::memcpy(tmp, h, size_t(n) * 2);
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(tmp)));
}

inline float Fp16Neon(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// The 16 unsigned bytes as 4 float vectors, in order.
inline void U8ToF32(uint8x16_t v, float32x4_t out[4]) {
  const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_high_u8(v);
  out[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
  out[1] = vcvtq_f32_u32(vmovl_high_u16(lo));
  out[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
  out[3] = vcvtq_f32_u32(vmovl_high_u16(hi));
}

// q.x for one block (x as 8 vectors of 4), as 4 partial sums.
inline float32x4_t BlockDotNeon(const uint8_t* q, const float32x4_t x[8]) {
  const uint8x16_t raw = vld1q_u8(q);
  float32x4_t lo[4], hi[4];
  U8ToF32(vandq_u8(raw, vdupq_n_u8(0xF)), lo);  // codes 0..15
  U8ToF32(vshrq_n_u8(raw, 4), hi);              // codes 16..31
  float32x4_t a = vmulq_f32(lo[0], x[0]), b = vmulq_f32(hi[0], x[4]);
  TC_UNROLL
  for (int j = 1; j < 4; ++j) {
    a = vfmaq_f32(a, lo[j], x[j]);
    b = vfmaq_f32(b, hi[j], x[4 + j]);
  }
  return vaddq_f32(a, b);
}

inline void LoadBlockX(const float* xb, float32x4_t x[8]) {
  TC_UNROLL
  for (int j = 0; j < 8; ++j) x[j] = vld1q_f32(xb + 4 * j);
}

void BlockSumsNeon(const float* x, int64_t nb, float* xs) {
  for (int64_t b = 0; b < nb; ++b) {
    float32x4_t v[8];
    LoadBlockX(x + b * 32, v);
    xs[b] = vaddvq_f32(vaddq_f32(vaddq_f32(vaddq_f32(v[0], v[1]), vaddq_f32(v[2], v[3])),
                                 vaddq_f32(vaddq_f32(v[4], v[5]), vaddq_f32(v[6], v[7]))));
  }
}

template <int R>
inline void GemvGroupNeon(const Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  const float* xs = a.xs + i * nb;
  float dbuf[R][4];
  float32x4_t acc[R], macc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = macc[r] = vdupq_n_f32(0.f);
  for (int64_t c = 0; c < nb; c += 4) {
    const int64_t cn = std::min<int64_t>(4, nb - c);
    float xst[4] = {};
    std::memcpy(xst, xs + c, size_t(cn) * 4);
    const float32x4_t xsv = vld1q_f32(xst);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint16_t* d = a.w->scales + (n + r) * 2 * nb + c;
      vst1q_f32(dbuf[r], LoadFp16x4(d, cn));
      macc[r] = vfmaq_f32(macc[r], LoadFp16x4(d + nb, cn), xsv);
      // The rows' next blocks (see kPf).
      __builtin_prefetch(a.w->qs + ((n + r) * nb + c + 4 * kPf) * 16);
    }
    for (int64_t b = 0; b < cn; ++b) {
      float32x4_t xv[8];
      LoadBlockX(x + (c + b) * 32, xv);
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* q = a.w->qs + ((n + r) * nb + c + b) * 16;
        acc[r] = vfmaq_n_f32(acc[r], BlockDotNeon(q, xv), dbuf[r][b]);
      }
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] =
        vaddvq_f32(vaddq_f32(acc[r], macc[r])) + (a.bias ? a.bias[n + r] : 0.f);
}

void GemvRowsNeon(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kNR <= n1; n += kNR)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupNeon<kNR>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupNeon<1>(a, n, i);
}

void DequantRowNeon(const Q4Weight& w, int64_t row, float* out) {
  const int64_t nb = Q4NumBlocks(w.k);
  const uint8_t* qs = w.qs + row * nb * 16;
  const uint16_t* d = w.scales + row * 2 * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const float32x4_t db = vdupq_n_f32(Fp16Neon(d[b])), mb = vdupq_n_f32(Fp16Neon(d[nb + b]));
    const uint8x16_t raw = vld1q_u8(qs + b * 16);
    float32x4_t q[8];
    U8ToF32(vandq_u8(raw, vdupq_n_u8(0xF)), q);
    U8ToF32(vshrq_n_u8(raw, 4), q + 4);
    TC_UNROLL
    for (int j = 0; j < 8; ++j) vst1q_f32(out + b * 32 + 4 * j, vfmaq_f32(mb, db, q[j]));
  }
}

#endif  // TC_Q4_ARM

#if TC_Q4_X86
// ---------------------------------------------------------------- AVX2 -----

TC_TARGET("avx2,fma,f16c") inline float HsumAvx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// q.x for one block: codes 0..7|16..23 come from bytes 0..7, 8..15|24..31
// from bytes 8..15.
TC_TARGET("avx2,fma,f16c")
inline __m256 BlockDotAvx2(const uint8_t* q, __m256 x0, __m256 x1, __m256 x2, __m256 x3) {
  const __m256i m4 = _mm256_set1_epi32(0xF);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m256i a = _mm256_cvtepu8_epi32(raw);
  const __m256i b = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(raw, raw));
  __m256 t0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, m4)), x0);
  __m256 t1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, m4)), x1);
  t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), x2, t0);
  t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), x3, t1);
  return _mm256_add_ps(t0, t1);
}

TC_TARGET("avx2,fma,f16c") void BlockSumsAvx2(const float* x, int64_t nb, float* xs) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* p = x + b * 32;
    xs[b] =
        HsumAvx2(_mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                               _mm256_add_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24))));
  }
}

TC_TARGET("avx2,fma,f16c") inline __m256 LoadFp16x8(const uint16_t* h, int64_t n) {
  if (n >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
  alignas(16) uint16_t tmp[8] = {};
  std::memcpy(tmp, h, size_t(n) * 2);
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}

template <int R>
TC_TARGET("avx2,fma,f16c")
inline void GemvGroupAvx2(const Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  const float* xs = a.xs + i * nb;
  alignas(32) float dbuf[R][8];
  __m256 acc[R], macc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = macc[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < nb; c += 8) {
    const int64_t cn = std::min<int64_t>(8, nb - c);
    alignas(32) float xst[8] = {};
    std::memcpy(xst, xs + c, size_t(cn) * 4);
    const __m256 xsv = _mm256_load_ps(xst);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint16_t* d = a.w->scales + (n + r) * 2 * nb + c;
      _mm256_store_ps(dbuf[r], LoadFp16x8(d, cn));
      macc[r] = _mm256_fmadd_ps(LoadFp16x8(d + nb, cn), xsv, macc[r]);
    }
    for (int64_t b = 0; b < cn; ++b) {
      const float* xb = x + (c + b) * 32;
      const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8),
                   x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* q = a.w->qs + ((n + r) * nb + c + b) * 16;
        acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dbuf[r][b]), BlockDotAvx2(q, x0, x1, x2, x3),
                                 acc[r]);
      }
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] =
        HsumAvx2(_mm256_add_ps(acc[r], macc[r])) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET("avx2,fma,f16c") void GemvRowsAvx2(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupAvx2<2>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupAvx2<1>(a, n, i);
}

TC_TARGET("avx2,fma,f16c") void DequantRowAvx2(const Q4Weight& w, int64_t row, float* out) {
  const int64_t nb = Q4NumBlocks(w.k);
  const uint8_t* qs = w.qs + row * nb * 16;
  const uint16_t* d = w.scales + row * 2 * nb;
  const __m256i m4 = _mm256_set1_epi32(0xF);
  for (int64_t b = 0; b < nb; ++b) {
    const __m256 db = _mm256_set1_ps(_cvtsh_ss(d[b])), mb = _mm256_set1_ps(_cvtsh_ss(d[nb + b]));
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + b * 16));
    const __m256i qa = _mm256_cvtepu8_epi32(raw);
    const __m256i qb = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(raw, raw));
    float* o = out + b * 32;
    _mm256_storeu_ps(o, _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(_mm256_and_si256(qa, m4)), mb));
    _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(_mm256_and_si256(qb, m4)), mb));
    _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(_mm256_srli_epi32(qa, 4)), mb));
    _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(_mm256_srli_epi32(qb, 4)), mb));
  }
}

// ---------------------------------------------------------------- AVX-512 --

// gcc 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its own header.
TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c") inline float HsumAvx512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return HsumAvx2(h);
}

#ifndef TC_Q4_PERMUTE
#define TC_Q4_PERMUTE 1
#endif

// q.x of one block, x's halves already loaded.
TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
inline __m512 BlockDotAvx512(const uint8_t* q, __m512 xlo, __m512 xhi) {
  const __m512i qi = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
#if TC_Q4_PERMUTE
  // vpermps reads only the low 4 index bits: a 16-entry table {0..15} turns a
  // nibble into its float in one shuffle, with no mask and no int->float.
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 lo = _mm512_permutexvar_ps(qi, table);
  const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(qi, 4), table);
#else
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(qi, _mm512_set1_epi32(0xF)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(qi, 4));
#endif
  return _mm512_fmadd_ps(hi, xhi, _mm512_mul_ps(lo, xlo));
}

TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
void BlockSumsAvx512(const float* x, int64_t nb, float* xs) {
  for (int64_t b = 0; b < nb; ++b)
    xs[b] =
        HsumAvx512(_mm512_add_ps(_mm512_loadu_ps(x + b * 32), _mm512_loadu_ps(x + b * 32 + 16)));
}

// R weight rows at once against one row of x: each x block is loaded once
// for R rows, and the R accumulator chains run in parallel.
template <int R>
TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
inline void GemvGroupAvx512(const Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  const float* xs = a.xs + i * nb;
  alignas(64) float dbuf[R][16];
  __m512 acc[R], macc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = macc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < nb; c += 16) {
    const int64_t cn = std::min<int64_t>(16, nb - c);
    const __mmask16 km = __mmask16((1u << cn) - 1);
    const __m512 xsv = _mm512_maskz_loadu_ps(km, xs + c);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint16_t* d = a.w->scales + (n + r) * 2 * nb + c;
      _mm_prefetch(reinterpret_cast<const char*>(d + kPf * R * 2 * nb), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(d + kPf * R * 2 * nb + nb), _MM_HINT_T0);
      _mm512_store_ps(dbuf[r], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, d)));
      macc[r] =
          _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, d + nb)), xsv, macc[r]);
    }
    for (int64_t b = 0; b < cn; ++b) {
      const __m512 xlo = _mm512_loadu_ps(x + (c + b) * 32),
                   xhi = _mm512_loadu_ps(x + (c + b) * 32 + 16);
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* q = a.w->qs + ((n + r) * nb + c + b) * 16;
        if (b % 4 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(q + kPf * R * nb * 16), _MM_HINT_T0);
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(dbuf[r][b]), BlockDotAvx512(q, xlo, xhi), acc[r]);
      }
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] =
        HsumAvx512(_mm512_add_ps(acc[r], macc[r])) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
void GemvRowsAvx512(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupAvx512<4>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupAvx512<1>(a, n, i);
}

TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
void DequantRowAvx512(const Q4Weight& w, int64_t row, float* out) {
  const int64_t nb = Q4NumBlocks(w.k);
  const uint8_t* qs = w.qs + row * nb * 16;
  const uint16_t* d = w.scales + row * 2 * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 db = _mm512_set1_ps(_cvtsh_ss(d[b])), mb = _mm512_set1_ps(_cvtsh_ss(d[nb + b]));
    const __m512i qi =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + b * 16)));
    _mm512_storeu_ps(
        out + b * 32,
        _mm512_fmadd_ps(db, _mm512_cvtepi32_ps(_mm512_and_si512(qi, _mm512_set1_epi32(0xF))), mb));
    _mm512_storeu_ps(out + b * 32 + 16,
                     _mm512_fmadd_ps(db, _mm512_cvtepi32_ps(_mm512_srli_epi32(qi, 4)), mb));
  }
}

// ------------------------------------------------ AVX-512 VNNI, 16-bit x ---
//
// The float kernels above are bound by unpacking, not by memory: turning each
// code into a float costs ~7 vector ops per 32 weights, so decode reads
// weights at half the memory bandwidth. Here x is rounded per block of 32 to
// int16 (scale s = max|x|/32767; error <= s/2 per element, 2^-16 of the
// block's largest value -- llama.cpp rounds x to 8 bits) and the codes stay
// integers: vpdpwssd multiplies 32 code/x pairs per instruction, exactly, in
// int32. The weights are still exactly d*q + m; only x is rounded, and the
// m*sum(x) term uses the float block sums.
//
// 64 bytes of qs (4 blocks, GGUF order) read as 32 16-bit lanes: lanes
// 8c..8c+7 belong to block c, and lane 8c+t holds q[2t], q[2t+16], q[2t+1],
// q[2t+17] in its four nibbles. AND/shift split them into four vectors with no
// shuffle; the per-call copy of x is laid out in that order (kXOrder), so
// every int32 lane of the dot products sums codes of one block (four lanes
// per block) and one vpermps spreads each block's d*s over its lanes.
#define TC_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"

TC_TARGET(TC_VNNI) inline float HmaxAvx512(__m512 v) {
  __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// Rounds x[nb*32] to int16 per block into out (natural order, nb*32) and the
// block scales into sc[nb]. False if a block is not finite or so small that
// 32767/max overflows: the caller then uses the float kernel.
TC_TARGET(TC_VNNI) bool QuantizeX16(const float* x, int64_t nb, int16_t* out, float* sc) {
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
    const float amax = HmaxAvx512(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    if (!(amax <= 3.0e38f) || (amax != 0.f && amax < 1e-30f)) return false;
    const __m512 inv = _mm512_set1_ps(amax == 0.f ? 0.f : 32767.f / amax);
    const __m256i lo = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)));
    const __m256i hi = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32 + 16), hi);
    sc[b] = amax / 32767.f;
  }
  return true;
}

template <int R>
TC_TARGET(TC_VNNI)
inline void GemvGroupVnni(const Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const int16_t* xq = a.xq + i * a.ldq;
  const float* xs = a.xs + i * nb;
  const float* xsc = a.xsc + i * a.lds;
  const __m512i m4 = _mm512_set1_epi16(0xF);
  // Lane l of a quad's dot products belongs to block l/4 of the quad.
  const __m512i quad_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 facc[R], macc[R], dd[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) facc[r] = macc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < nb; c += 16) {
    const int64_t cn = std::min<int64_t>(16, nb - c);
    const __mmask16 km = __mmask16((1u << cn) - 1);
    const __m512 xsv = _mm512_maskz_loadu_ps(km, xs + c);
    const __m512 sv = _mm512_loadu_ps(xsc + c);  // zero padded to lds
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint16_t* d = a.w->scales + (n + r) * 2 * nb + c;
      _mm_prefetch(reinterpret_cast<const char*>(d + kPf * R * 2 * nb), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(d + kPf * R * 2 * nb + nb), _MM_HINT_T0);
      dd[r] = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, d)), sv);
      macc[r] =
          _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, d + nb)), xsv, macc[r]);
    }
    for (int64_t g = 0; g * 4 < cn; ++g) {
      const int64_t b0 = c + g * 4;
      const int64_t left = std::min<int64_t>(4, nb - b0);
      const __mmask64 qm = left == 4 ? ~__mmask64(0) : (__mmask64(1) << (16 * left)) - 1;
      const int16_t* xg = xq + b0 * 32;
      const __m512i x0 = _mm512_loadu_si512(xg), x1 = _mm512_loadu_si512(xg + 32),
                    x2 = _mm512_loadu_si512(xg + 64), x3 = _mm512_loadu_si512(xg + 96);
      const __m512i idx = _mm512_add_epi32(quad_lane, _mm512_set1_epi32(int(g * 4)));
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(a.w->qs + ((n + r + kPf * R) * nb + b0) * 16),
                     _MM_HINT_T0);
        const __m512i w = _mm512_maskz_loadu_epi8(qm, a.w->qs + ((n + r) * nb + b0) * 16);
        __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w, m4), x0);
        t = _mm512_dpwssd_epi32(t, _mm512_and_si512(_mm512_srli_epi16(w, 4), m4), x1);
        t = _mm512_dpwssd_epi32(t, _mm512_and_si512(_mm512_srli_epi16(w, 8), m4), x2);
        t = _mm512_dpwssd_epi32(t, _mm512_srli_epi16(w, 12), x3);
        facc[r] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(idx, dd[r]), facc[r]);
      }
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] =
        HsumAvx512(_mm512_add_ps(facc[r], macc[r])) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET(TC_VNNI) void GemvRowsVnni(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupVnni<4>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GemvGroupVnni<1>(a, n, i);
}
#endif  // TC_Q4_X86

// ---------------------------------------------------------------- Q8_0 -----

struct Q8Args {
  const float* x;  // [m, ldx], zero padded
  int64_t m, ldx;
  const Q8Weight* w;
  const float* bias;
  float* y;
  const int16_t* xq = nullptr;  // 16-bit path: [m, ldq], natural order
  const float* xsc = nullptr;   // [m, lds]
  int64_t ldq = 0, lds = 0;
};

void Q8RowsScalar(const Q8Args& a, int64_t n0, int64_t n1) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const int8_t* q = a.w->qs + (n * nb + b) * 32;
        float t = 0.f;
        for (int j = 0; j < 32; ++j) t += float(q[j]) * x[b * 32 + j];
        acc += Fp16ToFp32(a.w->scales[n * nb + b]) * t;
      }
      a.y[i * a.w->n + n] = acc + (a.bias ? a.bias[n] : 0.f);
    }
}

#if TC_Q4_ARM
template <int R>
inline void Q8GroupNeon(const Q8Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  float32x4_t acc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.f);
  for (int64_t b = 0; b < nb; ++b) {
    float32x4_t xv[8];
    LoadBlockX(x + b * 32, xv);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const int8_t* q = a.w->qs + ((n + r) * nb + b) * 32;
      float32x4_t t = vdupq_n_f32(0.f), u = vdupq_n_f32(0.f);
      TC_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int8x16_t v = vld1q_s8(q + 16 * h);
        const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
        t = vfmaq_f32(t, vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), xv[4 * h]);
        u = vfmaq_f32(u, vcvtq_f32_s32(vmovl_high_s16(lo)), xv[4 * h + 1]);
        t = vfmaq_f32(t, vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), xv[4 * h + 2]);
        u = vfmaq_f32(u, vcvtq_f32_s32(vmovl_high_s16(hi)), xv[4 * h + 3]);
      }
      acc[r] = vfmaq_n_f32(acc[r], vaddq_f32(t, u), Fp16Neon(a.w->scales[(n + r) * nb + b]));
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] = vaddvq_f32(acc[r]) + (a.bias ? a.bias[n + r] : 0.f);
}

void Q8RowsNeon(const Q8Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupNeon<2>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupNeon<1>(a, n, i);
}
#endif  // TC_Q4_ARM

#if TC_Q4_X86
template <int R>
TC_TARGET("avx2,fma,f16c")
inline void Q8GroupAvx2(const Q8Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  __m256 acc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8),
                 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const int8_t* q = a.w->qs + ((n + r) * nb + b) * 32;
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16));
      __m256 t0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), x0);
      __m256 t1 =
          _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo))), x1);
      t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), x2, t0);
      t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi))), x3,
                           t1);
      const float d = _cvtsh_ss(a.w->scales[(n + r) * nb + b]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_add_ps(t0, t1), acc[r]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] = HsumAvx2(acc[r]) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET("avx2,fma,f16c") void Q8RowsAvx2(const Q8Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupAvx2<2>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupAvx2<1>(a, n, i);
}

template <int R>
TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
inline void Q8GroupAvx512(const Q8Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const float* x = a.x + i * a.ldx;
  __m512 acc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 xlo = _mm512_loadu_ps(x + b * 32), xhi = _mm512_loadu_ps(x + b * 32 + 16);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const int8_t* q = a.w->qs + ((n + r) * nb + b) * 32;
      _mm_prefetch(reinterpret_cast<const char*>(q + kPf * R * nb * 32), _MM_HINT_T0);
      const __m512 lo = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
      const __m512 hi = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16))));
      const __m512 t = _mm512_fmadd_ps(hi, xhi, _mm512_mul_ps(lo, xlo));
      const float d = _cvtsh_ss(a.w->scales[(n + r) * nb + b]);
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc[r]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] = HsumAvx512(acc[r]) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET("avx512f,avx512bw,avx512vl,fma,f16c")
void Q8RowsAvx512(const Q8Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupAvx512<4>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupAvx512<1>(a, n, i);
}
// Q8_0 with 16-bit x: one block is 32 int8 codes, sign-extended to the 32
// lanes of one vpdpwssd.
template <int R>
TC_TARGET(TC_VNNI)
inline void Q8GroupVnni(const Q8Args& a, int64_t n, int64_t i) {
  const int64_t nb = Q4NumBlocks(a.w->k);
  const int16_t* xq = a.xq + i * a.ldq;
  const float* xsc = a.xsc + i * a.lds;
  alignas(64) float dd[R][16];
  __m512 acc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < nb; c += 16) {
    const int64_t cn = std::min<int64_t>(16, nb - c);
    const __mmask16 km = __mmask16((1u << cn) - 1);
    const __m512 sv = _mm512_loadu_ps(xsc + c);
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(a.w->scales + (n + r + kPf * R) * nb + c),
                   _MM_HINT_T0);
      _mm512_store_ps(
          dd[r],
          _mm512_mul_ps(
              _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, a.w->scales + (n + r) * nb + c)), sv));
    }
    for (int64_t b = 0; b < cn; ++b) {
      const __m512i xv = _mm512_loadu_si512(xq + (c + b) * 32);
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(a.w->qs + ((n + r + kPf * R) * nb + c + b) * 32),
                     _MM_HINT_T0);
        const __m256i q = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(a.w->qs + ((n + r) * nb + c + b) * 32));
        const __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_cvtepi8_epi16(q), xv);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(dd[r][b]), acc[r]);
      }
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.w->n + n + r] = HsumAvx512(acc[r]) + (a.bias ? a.bias[n + r] : 0.f);
}

TC_TARGET(TC_VNNI) void Q8RowsVnni(const Q8Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupVnni<4>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) Q8GroupVnni<1>(a, n, i);
}
#endif  // TC_Q4_X86

using Q8RowsFn = void (*)(const Q8Args&, int64_t, int64_t);

struct Isa;
void TileRowsQ8(const Isa& isa, const Q8Args& a, int64_t n0, int64_t n1);

struct Q8Job {
  Q8RowsFn fn;
  Q8Args args;
  const Isa* tiled = nullptr;  // set: TileRowsQ8 on this isa instead of fn
};

void RunQ8Job(void* ctx, int64_t begin, int64_t end) {
  const Q8Job& j = *static_cast<const Q8Job*>(ctx);
  if (j.tiled != nullptr) {
    TileRowsQ8(*j.tiled, j.args, begin, end);
  } else {
    j.fn(j.args, begin, end);
  }
}

using DequantFn = void (*)(const Q4Weight&, int64_t, float*);

using SumsFn = void (*)(const float*, int64_t, float*);

void BlockSumsScalar(const float* x, int64_t nb, float* xs) {
  for (int64_t b = 0; b < nb; ++b) {
    float s = 0.f;
    for (int j = 0; j < 32; ++j) s += x[b * 32 + j];
    xs[b] = s;
  }
}

// Rounds one row of x (nb blocks, zero padded) to int16 per block, in
// natural order, and its block scales. False: a block the rounding cannot
// represent (see QuantizeX16).
using XQuantFn = bool (*)(const float* x, int64_t nb, int16_t* out, float* sc);

struct Isa {
  const char* name;
  SumsFn sums;
  RowsFn gemv;
  DequantFn dequant;
  const tile::MicroFn* micro;  // by MR (1..4); nullptr = scalar tile path
  Q8RowsFn q8;
  // Decode with x rounded to 16 bits (nullptr: this isa has none).
  XQuantFn quantize_x = nullptr;
  RowsFn gemv16 = nullptr;
  Q8RowsFn q8_16 = nullptr;
};

// Where the q4 16-bit kernel reads each element of x: per 4 blocks, vector
// k (32 lanes) holds element kXOrder[k][t] of block c at lane 8c+t.
constexpr int kXOrder[4][8] = {{0, 2, 4, 6, 8, 10, 12, 14},
                               {16, 18, 20, 22, 24, 26, 28, 30},
                               {1, 3, 5, 7, 9, 11, 13, 15},
                               {17, 19, 21, 23, 25, 27, 29, 31}};

void InterleaveX16(const int16_t* xn, int64_t nb, int16_t* xq) {
  std::memset(xq, 0, size_t((nb + 3) / 4 * 128) * sizeof(int16_t));
  for (int64_t b = 0; b < nb; ++b) {
    int16_t* o = xq + (b / 4) * 128 + (b % 4) * 8;
    for (int k = 0; k < 4; ++k)
      for (int t = 0; t < 8; ++t) o[k * 32 + t] = xn[b * 32 + kXOrder[k][t]];
  }
}

void TileRows(const Isa& isa, const Args& a, int64_t n0, int64_t n1) {
  tile::TileRows(
      isa.micro, [&](int64_t row, float* out) { isa.dequant(*a.w, row, out); }, a.x, a.m, a.ldx,
      a.w->n, a.bias, a.y, n0, n1);
}

void DequantQ8Row(const Q8Weight& w, int64_t row, float* out) {
  const int64_t nb = Q4NumBlocks(w.k);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = Fp16ToFp32(w.scales[row * nb + b]);
    const int8_t* q = w.qs + (row * nb + b) * 32;
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = d * float(q[j]);
  }
}

// Q8_0 at prefill sizes (a Q8_0 GGUF's layer linears over a prompt): the
// same tiles as Q4.
void TileRowsQ8(const Isa& isa, const Q8Args& a, int64_t n0, int64_t n1) {
  tile::TileRows(
      isa.micro, [&](int64_t row, float* out) { DequantQ8Row(*a.w, row, out); }, a.x, a.m, a.ldx,
      a.w->n, a.bias, a.y, n0, n1);
}

const Isa kScalar{"scalar",         BlockSumsScalar, GemvRowsScalar,
                  DequantRowScalar, nullptr,         Q8RowsScalar};
#if TC_Q4_X86
const Isa kAvx2{"avx2", BlockSumsAvx2, GemvRowsAvx2, DequantRowAvx2, tile::MicroAvx2(), Q8RowsAvx2};
const Isa kAvx512{"avx512",         BlockSumsAvx512,     GemvRowsAvx512,
                  DequantRowAvx512, tile::MicroAvx512(), Q8RowsAvx512};
// "avx512" plus 16-bit activations for decode (the float tiles for prefill).
Isa WithInt16Decode(Isa isa, const char* name, XQuantFn quantize, RowsFn gemv16, Q8RowsFn q8_16) {
  isa.name = name;
  isa.quantize_x = quantize;
  isa.gemv16 = gemv16;
  isa.q8_16 = q8_16;
  return isa;
}
const Isa kAvx512Vnni =
    WithInt16Decode(kAvx512, "avx512vnni", QuantizeX16, GemvRowsVnni, Q8RowsVnni);

bool CpuHasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool CpuHasAvx512() {
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool CpuHasAvx512Vnni() { return CpuHasAvx512() && __builtin_cpu_supports("avx512vnni"); }
#endif
#if TC_Q4_ARM
const Isa kNeon{"neon", BlockSumsNeon, GemvRowsNeon, DequantRowNeon, tile::MicroNeon(), Q8RowsNeon};
#endif

const Isa* AutoIsa() {
#if TC_Q4_X86
  if (CpuHasAvx512Vnni()) return &kAvx512Vnni;
  if (CpuHasAvx512()) return &kAvx512;
  if (CpuHasAvx2()) return &kAvx2;
#endif
#if TC_Q4_ARM
  return &kNeon;
#endif
  return &kScalar;
}

const Isa* IsaByName(const std::string& s) {
  if (s == "scalar") return &kScalar;
#if TC_Q4_X86
  if (s == "avx2" && CpuHasAvx2()) return &kAvx2;
  if (s == "avx512" && CpuHasAvx512()) return &kAvx512;
  if (s == "avx512vnni" && CpuHasAvx512Vnni()) return &kAvx512Vnni;
#endif
#if TC_Q4_ARM
  if (s == "neon") return &kNeon;
#endif
  return nullptr;
}

// TORCHCHAT_Q4_ISA=avx512 (say) keeps x in fp32 on a VNNI machine: the
// kernels are then exact, and decode ~10-20% slower.
const Isa* DefaultIsa() {
  const char* env = std::getenv("TORCHCHAT_Q4_ISA");
  const Isa* isa = env != nullptr ? IsaByName(env) : nullptr;
  return isa != nullptr ? isa : AutoIsa();
}

// The kernels Q4Linear and Q8Linear use; mutable (Q4ForceIsa sets it), so not kName.
const Isa* active_isa = DefaultIsa();

struct Job {
  const Isa* isa;
  Args args;
  bool tiled;
  RowsFn gemv;
};

void RunJob(void* ctx, int64_t begin, int64_t end) {
  const Job& j = *static_cast<const Job*>(ctx);
  if (!j.tiled) {
    j.gemv(j.args, begin, end);
  } else if (j.isa->micro != nullptr) {
    TileRows(*j.isa, j.args, begin, end);
  } else {
    TileRowsScalar(j.args, begin, end);
  }
}

}  // namespace

void Q4Dequantize(const Q4Weight& w, float* out) {
  const int64_t kp = Q4NumBlocks(w.k) * 32;
  std::vector<float> row(kp);
  for (int64_t n = 0; n < w.n; ++n) {
    DequantRowScalar(w, n, row.data());
    std::memcpy(out + n * w.k, row.data(), size_t(w.k) * sizeof(float));
  }
}

const char* Q4Isa() { return active_isa->name; }

bool Q4ForceIsa(const char* isa) {
  const std::string s = isa ? isa : "";
  const Isa* picked = s.empty() ? DefaultIsa() : IsaByName(s);
  if (picked == nullptr) return false;
  active_isa = picked;
  return true;
}

void Q4Linear(const float* x, int64_t m, const Q4Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf) {
  if (m <= 0 || w.n <= 0) return;
  const int64_t nb = Q4NumBlocks(w.k), kp = nb * 32;
  // Scratch reused across calls on this thread: decode allocates nothing.
  thread_local std::vector<float> xs, xpad;
  xs.resize(size_t(m * nb));
  const float* xp = x;
  if (kp != w.k) {
    xpad.assign(size_t(m * kp), 0.f);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(xpad.data() + i * kp, x + i * w.k, size_t(w.k) * sizeof(float));
    xp = xpad.data();
  }
  const Isa* isa = active_isa;
  const bool tiled = m >= kTileMinM;
  Job job{isa, Args{xp, xs.data(), m, kp, &w, bias, y}, tiled, isa->gemv};
  // The tiled path multiplies dequantized weights and needs no block sums.
  if (!tiled) {
    for (int64_t i = 0; i < m; ++i) isa->sums(xp + i * kp, nb, xs.data() + i * nb);
    if (isa->quantize_x != nullptr) {
      thread_local std::vector<int16_t> xq, xn;
      thread_local std::vector<float> xsc;
      const int64_t ldq = (nb + 3) / 4 * 128, lds = (nb + 15) / 16 * 16;
      xq.resize(size_t(m * ldq));
      xn.resize(size_t(nb * 32));
      xsc.assign(size_t(m * lds), 0.f);
      bool ok = true;
      for (int64_t i = 0; i < m && ok; ++i) {
        ok = isa->quantize_x(xp + i * kp, nb, xn.data(), xsc.data() + i * lds);
        InterleaveX16(xn.data(), nb, xq.data() + i * ldq);
      }
      if (ok) {
        job.args.xq = xq.data();
        job.args.xsc = xsc.data();
        job.args.ldq = ldq;
        job.args.lds = lds;
        job.gemv = isa->gemv16;
      }
    }
  }
  // ~16K weights per task keeps per-task overhead small next to the work.
  int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, kp));
  if (job.tiled) grain = ((grain + kNR - 1) / kNR) * kNR;
  if (pf != nullptr && pf->run != nullptr && w.n > grain) {
    pf->run(pf->self, w.n, grain, RunJob, &job);
  } else {
    RunJob(&job, 0, w.n);
  }
}

void Q8Linear(const float* x, int64_t m, const Q8Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf) {
  if (m <= 0 || w.n <= 0) return;
  const int64_t kp = Q4NumBlocks(w.k) * 32;
  thread_local std::vector<float> xpad;
  const float* xp = x;
  if (kp != w.k) {
    xpad.assign(size_t(m * kp), 0.f);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(xpad.data() + i * kp, x + i * w.k, size_t(w.k) * sizeof(float));
    xp = xpad.data();
  }
  const Isa* isa = active_isa;
  Q8Job job{isa->q8, Q8Args{xp, m, kp, &w, bias, y}};
  // Prefill (a Q8_0 GGUF's layer linears over a prompt, eval's full
  // logits): dequantized tiles, past where the rows kernels win.
  const bool tiled = m >= kQ8TileMinM && isa->micro != nullptr;
  if (tiled) job.tiled = isa;
  // Like Q4Linear, x is rounded for decode only (here, up to kQ8Int16MaxM
  // sequences at once); full logits over a window stay exact.
  if (!tiled && isa->quantize_x != nullptr && m < kQ8Int16MaxM) {
    const int64_t nb = kp / 32, ldq = nb * 32, lds = (nb + 15) / 16 * 16;
    thread_local std::vector<int16_t> xq;
    thread_local std::vector<float> xsc;
    xq.resize(size_t(m * ldq));
    xsc.assign(size_t(m * lds), 0.f);
    bool ok = true;
    for (int64_t i = 0; i < m && ok; ++i)
      ok = isa->quantize_x(xp + i * kp, nb, xq.data() + i * ldq, xsc.data() + i * lds);
    if (ok) {
      job.args.xq = xq.data();
      job.args.xsc = xsc.data();
      job.args.ldq = ldq;
      job.args.lds = lds;
      job.fn = isa->q8_16;
    }
  }
  int64_t grain = std::max<int64_t>(4, (int64_t(1) << 13) / kp);
  if (tiled) grain = ((grain + kNR - 1) / kNR) * kNR;
  if (pf != nullptr && pf->run != nullptr && w.n > grain) {
    pf->run(pf->self, w.n, grain, RunQ8Job, &job);
  } else {
    RunQ8Job(&job, 0, w.n);
  }
}

const char* Q4PackGguf(int ggml_type, const uint8_t* raw, int64_t n, int64_t k, uint8_t* qs,
                       uint16_t* scales) {
  if (ggml_type != 2 && ggml_type != 3) return "Q4PackGguf: ggml type must be Q4_0 (2) or Q4_1 (3)";
  if (n <= 0 || k <= 0 || k % 32 != 0)
    return "Q4PackGguf: shape must be [N, K] with K a positive multiple of 32";
  const int64_t nb = k / 32;
  const int bs = ggml_type == 2 ? 18 : 20;
  for (int64_t r = 0; r < n; ++r) {
    uint16_t* d = scales + r * 2 * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = raw + (r * nb + b) * bs;
      uint16_t dh, mh;
      std::memcpy(&dh, blk, 2);  // GGUF is little-endian, as are our targets
      if (ggml_type == 3) {
        std::memcpy(&mh, blk + 2, 2);
      } else {
        // Q4_0: w = d*(q-8) = d*q - 8d; -8d is exact in fp16 unless it overflows.
        const float m = -8.f * Fp16ToFp32(dh);
        mh = Fp32ToFp16(m);
        if (Fp16ToFp32(mh) != m && !std::isnan(m))
          return "Q4PackGguf: Q4_0 scale too large (|8d| overflows fp16)";
      }
      d[b] = dh;
      d[nb + b] = mh;
      std::memcpy(qs + (r * nb + b) * 16, blk + (bs - 16), 16);
    }
  }
  return nullptr;
}

}  // namespace torchchat::kernels
