#include "kernels/q4_linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/fp16.h"
#include "kernels/isa.h"
#include "kernels/tile_gemm.h"

namespace torchchat::kernels {
namespace {

// Blocks per chunk of d/m widened to fp32 on the stack: K up to 2048 in one
// chunk, larger K loops without heap allocation.
constexpr int64_t kChunk = 64;
// At or above this many rows of x, dequantize tiles of W to fp32 and run a
// register-blocked kernel: the dequantization is paid once per weight row
// instead of once per (row of x, weight row).
constexpr int64_t kTileMinM = 8;
using isa::kPf;
using tile::kNR;  // weight rows per tile
#if TC_Q4_X86
using isa::HsumAvx2;
using isa::HsumAvx512;
#endif
#if TC_Q4_ARM
using isa::Fp16Neon;
using isa::LoadBlockX;
#endif

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

using DequantFn = void (*)(const Q4Weight&, int64_t, float*);
using SumsFn = void (*)(const float*, int64_t, float*);

void BlockSumsScalar(const float* x, int64_t nb, float* xs) {
  for (int64_t b = 0; b < nb; ++b) {
    float s = 0.f;
    for (int j = 0; j < 32; ++j) s += x[b * 32 + j];
    xs[b] = s;
  }
}

// A path's kernels: x's block sums, decode rows with fp32 x, a weight row
// dequantized (the tiles' input), and decode rows with x rounded to int16
// (nullptr: the path has none).
struct Q4Kernels {
  SumsFn sums;
  RowsFn gemv;
  DequantFn dequant;
  RowsFn gemv16 = nullptr;
};

const Q4Kernels& KernelsFor(isa::Path p) {
  static const Q4Kernels scalar{BlockSumsScalar, GemvRowsScalar, DequantRowScalar};
#if TC_Q4_X86
  static const Q4Kernels avx2{BlockSumsAvx2, GemvRowsAvx2, DequantRowAvx2};
  static const Q4Kernels avx512{BlockSumsAvx512, GemvRowsAvx512, DequantRowAvx512};
  // "avx512" plus 16-bit activations for decode (the float tiles for prefill).
  static const Q4Kernels vnni{BlockSumsAvx512, GemvRowsAvx512, DequantRowAvx512, GemvRowsVnni};
  if (p == isa::Path::kAvx2) return avx2;
  if (p == isa::Path::kAvx512) return avx512;
  if (p == isa::Path::kAvx512Vnni) return vnni;
#endif
#if TC_Q4_ARM
  static const Q4Kernels neon{BlockSumsNeon, GemvRowsNeon, DequantRowNeon};
  if (p == isa::Path::kNeon) return neon;
#endif
  return scalar;
}

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

struct Job {
  const Q4Kernels* kern;
  const tile::MicroFn* micro;  // nullptr: the scalar tiles
  Args args;
  bool tiled;
  RowsFn gemv;
};

void RunJob(void* ctx, int64_t begin, int64_t end) {
  const Job& j = *static_cast<const Job*>(ctx);
  const Args& a = j.args;
  if (!j.tiled) {
    j.gemv(a, begin, end);
  } else if (j.micro != nullptr) {
    tile::TileRows(
        j.micro, [&](int64_t row, float* out) { j.kern->dequant(*a.w, row, out); }, a.x, a.m, a.ldx,
        a.w->n, a.bias, a.y, begin, end);
  } else {
    TileRowsScalar(a, begin, end);
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

const char* Q4Isa() { return isa::Name(isa::Active()); }

bool Q4ForceIsa(const char* name) { return isa::Force(name); }

void Q4Linear(const float* x, int64_t m, const Q4Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf) {
  if (m <= 0 || w.n <= 0) return;
  const int64_t nb = Q4NumBlocks(w.k), kp = nb * 32;
  // Scratch reused across calls on this thread: decode allocates nothing.
  thread_local std::vector<float> xs;
  xs.resize(size_t(m * nb));
  const float* xp = isa::PadToBlocks(x, m, w.k, kp);
  const isa::Path path = isa::Active();
  const Q4Kernels& kern = KernelsFor(path);
  const bool tiled = m >= kTileMinM;
  Job job{&kern, isa::Micro(path), Args{xp, xs.data(), m, kp, &w, bias, y}, tiled, kern.gemv};
  // The tiled path multiplies dequantized weights and needs no block sums.
  if (!tiled) {
    for (int64_t i = 0; i < m; ++i) kern.sums(xp + i * kp, nb, xs.data() + i * nb);
    if (kern.gemv16 != nullptr) {
      thread_local std::vector<int16_t> xq, xn;
      thread_local std::vector<float> xsc;
      const int64_t ldq = (nb + 3) / 4 * 128, lds = (nb + 15) / 16 * 16;
      xq.resize(size_t(m * ldq));
      xn.resize(size_t(nb * 32));
      xsc.assign(size_t(m * lds), 0.f);
      bool ok = true;
      for (int64_t i = 0; i < m && ok; ++i) {
        ok = isa::QuantizeX16(xp + i * kp, nb, xn.data(), xsc.data() + i * lds);
        InterleaveX16(xn.data(), nb, xq.data() + i * ldq);
      }
      if (ok) {
        job.args.xq = xq.data();
        job.args.xsc = xsc.data();
        job.args.ldq = ldq;
        job.args.lds = lds;
        job.gemv = kern.gemv16;
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
