// Decode dots of the K-quants that make up a Q4_K_M file (Q4_K, Q5_K and
// Q6_K), and AVX2's of IQ4_XS, against x rounded as llama.cpp's Q8_K: int8 per chunk of 256 with
// one fp32 scale, and the sums of the rounded codes per 16 and per 32.
//
// Per chunk and row of x, everything up to one fp32 FMA is integer: the
// codes' dots with x (vpmaddubsw), times the block's small integer
// sub-block scales (vpmaddwd, or vpdpwssd with AVX-512 VNNI), summed in
// int32; the offsets (Q4_K/Q5_K's mins, Q6_K's -32) from x's code sums,
// also in int32. Then sum * d * x's scale, one FMA (plus one for the mins).
// The generic loop (linear.cc) instead converts the scales to floats and
// does one conversion and FMA per group of 32: in cache, on one Zen 4 core,
// Q4_K ran 14-15 GB/s of weights that way and 19-21 here, Q6_K 20 and 30
// (//kernels/ggml:linear_bench --mb 1 --threads 1), where a decode step's
// two threads need about 16 each to keep up with memory.
//
// Each dot is exact in int32: |code| <= 63, |x| <= 127, scales <= 63 (Q4_K,
// Q5_K) or |scale| <= 128 (Q6_K): a chunk's sum is below 2^29. So a row's
// result is the same whatever MR (the x rows sharing each weight chunk).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/ggml/formats.h"
#include "kernels/ggml/formats_avx2.h"

// Fixed-count loops over accumulator arrays must be fully unrolled, or gcc -O2
// keeps the accumulators in memory and every FMA waits on a store-forward.
#ifndef TC_UNROLL
#define TC_UNROLL _Pragma("GCC unroll 16")
#endif

#define TC_GGML_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace torchchat::kernels::ggml {

// x rounded per 256 (Q8_K): for x row j of MR, k codes at q + j * k, and
// per chunk c its scale d[j * (k / 256) + c], per 16 elements h the sum of
// its codes bs16[j * (k / 16) + h], per 32 bs32[j * (k / 32) + ...].
struct XK {
  const int8_t* q;
  const float* d;
  const int16_t* bs16;
  const int16_t* bs32;
  int64_t k;
};

// -------------------------------------------------------------------- AVX2 --

TC_GGML_AVX2 inline float HsumK(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Q4_K (kQ5 false) or Q5_K (true): out[j] = row . x_j for MR rows of x.
template <bool kQ5, int MR>
TC_GGML_AVX2 void DotQ45KAvx2(const uint8_t* row, const XK& x, float* out) {
  constexpr int kBytes = kQ5 ? Q5_K::kBytes : Q4_K::kBytes, kQs = kQ5 ? 48 : 16;
  const int64_t k = x.k, chunks = k / 256;
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc[MR];
  __m128 accm[MR];
  for (int j = 0; j < MR; ++j) {
    acc[j] = _mm256_setzero_ps();
    accm[j] = _mm_setzero_ps();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * kBytes;
    alignas(16) uint8_t sm[16];
    UnpackK4(b + 4, sm);
    // d and dmin by one vcvtph2ps: scalar fp16 conversions cost as much as
    // the chunk's dots.
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(int(Le32(b))));
    const __m128i mins =
        _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
    __m256i hb;
    if constexpr (kQ5) hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    __m256i sumi[MR];
    for (int j = 0; j < MR; ++j) sumi[j] = _mm256_setzero_si256();
    TC_UNROLL
    for (int p = 0; p < 4; ++p) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kQs + 32 * p));
      __m256i q[2] = {_mm256_and_si256(raw, m4), _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4)};
      if constexpr (kQ5) {
        // Group g's fifth bit is bit g of qh: 16 where set.
        TC_UNROLL
        for (int h = 0; h < 2; ++h) {
          const __m256i bit =
              _mm256_and_si256(_mm256_srli_epi16(hb, 2 * p + h), _mm256_set1_epi8(1));
          q[h] = _mm256_or_si256(q[h], _mm256_slli_epi16(bit, 4));
        }
      }
      TC_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256i sc = _mm256_set1_epi16(int16_t(sm[2 * p + h]));
        TC_UNROLL
        for (int j = 0; j < MR; ++j) {
          const __m256i xv = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x.q + j * k + c * 256 + 64 * p + 32 * h));
          sumi[j] =
              _mm256_add_epi32(sumi[j], _mm256_madd_epi16(_mm256_maddubs_epi16(q[h], xv), sc));
        }
      }
    }
    TC_UNROLL
    for (int j = 0; j < MR; ++j) {
      const __m128 s = _mm_mul_ps(dm, _mm_set1_ps(x.d[j * chunks + c]));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_broadcastss_ps(s), acc[j]);
      const __m128i bs =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bs32 + j * (k / 32) + c * 8));
      accm[j] = _mm_fnmadd_ps(_mm_cvtepi32_ps(_mm_madd_epi16(mins, bs)), _mm_shuffle_ps(s, s, 0x55),
                              accm[j]);
    }
  }
  TC_UNROLL
  for (int j = 0; j < MR; ++j)
    out[j] = HsumK(_mm256_add_ps(acc[j], _mm256_zextps128_ps256(accm[j])));
}

// Q6_K. Group g = 4n + i (i < 4) of the chunk: low nibbles (i < 2) or high
// ones of ql[64n + 32(i % 2)..], bits 2i of qh[32n..] on top; its halves
// take scales 8n + 2i and 8n + 2i + 1. The codes are unsigned (0..63); the
// -32 is sum(scale * -32 * x) over the sub-blocks, from x's sums per 16.
template <int MR>
TC_GGML_AVX2 void DotQ6KAvx2(const uint8_t* row, const XK& x, float* out) {
  const int64_t k = x.k, chunks = k / 256;
  const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(0x30);
  __m256 acc[MR];
  for (int j = 0; j < MR; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * Q6_K::kBytes;
    const float d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b[208] | b[209] << 8)));
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
    __m256i sumi[MR];
    {
      // -32 * scale, per 16: at most 4096 in magnitude.
      const __m256i neg =
          _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5));
      TC_UNROLL
      for (int j = 0; j < MR; ++j)
        sumi[j] = _mm256_madd_epi16(
            neg,
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bs16 + j * (k / 16) + c * 16)));
    }
    TC_UNROLL
    for (int n = 0; n < 2; ++n) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * n));
      TC_UNROLL
      for (int i = 0; i < 4; ++i) {
        const __m256i ql =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * n + 32 * (i % 2)));
        const __m256i lo =
            i < 2 ? _mm256_and_si256(ql, m4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
        // Bits 2i, 2i + 1 of qh to bits 4, 5.
        const __m256i hi = 2 * i <= 4 ? _mm256_and_si256(_mm256_slli_epi16(qh, 4 - 2 * i), m3)
                                      : _mm256_and_si256(_mm256_srli_epi16(qh, 2 * i - 4), m3);
        const __m256i q = _mm256_or_si256(lo, hi);
        const int s = 8 * n + 2 * i;
        const __m128i pick = _mm_setr_epi8(s, s, s, s, s, s, s, s, s + 1, s + 1, s + 1, s + 1,
                                           s + 1, s + 1, s + 1, s + 1);
        const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
        TC_UNROLL
        for (int j = 0; j < MR; ++j) {
          const __m256i xv = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x.q + j * k + c * 256 + 128 * n + 32 * i));
          sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), sc));
        }
      }
    }
    TC_UNROLL
    for (int j = 0; j < MR; ++j)
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_set1_ps(d * x.d[j * chunks + c]),
                               acc[j]);
  }
  TC_UNROLL
  for (int j = 0; j < MR; ++j) out[j] = HsumK(acc[j]);
}

// IQ4_XS: per group g of 32, the levels by vpshufb (signed, |v| <= 127)
// against x with their signs (vpmaddubsw), times the group's 6-bit scale
// ls - 32 (vpmaddwd), summed in int32; one FMA per chunk with d * x-scale.
// Exact in int32: |sum| <= 256 * 127 * 127 * 32 per chunk.
template <int MR>
TC_GGML_AVX2 void DotIQ4XSAvx2(const uint8_t* row, const XK& x, float* out) {
  const int64_t k = x.k, chunks = k / 256;
  const __m128i lv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values));
  const __m256i levels = _mm256_set_m128i(lv, lv), m4 = _mm256_set1_epi8(0xF);
  __m256 acc[MR];
  for (int j = 0; j < MR; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * IQ4_XS::kBytes;
    const uint32_t sl = Le32(b + 4);
    const uint32_t sh = uint32_t(b[2] | b[3] << 8);
    __m256i sumi[MR];
    for (int j = 0; j < MR; ++j) sumi[j] = _mm256_setzero_si256();
    TC_UNROLL
    for (int g = 0; g < 8; ++g) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 8 + 16 * g));
      const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
                                           m4);  // elements 0-15, then 16-31
      const __m256i q = _mm256_shuffle_epi8(levels, nib);
      const __m256i qa = _mm256_sign_epi8(q, q);
      const int ls = int((sl >> (4 * g)) & 0xF) | int(((sh >> (2 * g)) & 3) << 4);
      const __m256i sc = _mm256_set1_epi16(int16_t(ls - 32));
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        const __m256i xv = _mm256_sign_epi8(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + j * k + c * 256 + 32 * g)),
            q);
        sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(_mm256_maddubs_epi16(qa, xv), sc));
      }
    }
    const float d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b[0] | b[1] << 8)));
    TC_UNROLL
    for (int j = 0; j < MR; ++j)
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[j]), _mm256_set1_ps(d * x.d[j * chunks + c]),
                               acc[j]);
  }
  TC_UNROLL
  for (int j = 0; j < MR; ++j) out[j] = HsumK(acc[j]);
}

// ------------------------------------------------------------ AVX-512 VNNI --
// The same sums, 64 elements (two groups) per vpmaddubsw, the scales
// applied and accumulated by one vpdpwssd.

TC_GGML_VNNI inline float HsumK512(__m512 v) {
  return HsumK(_mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

// int16 lanes 0..15 take index a, 16..31 index b (vpermw's indices).
TC_GGML_VNNI inline __m512i Halves16(int a, int b) {
  return _mm512_inserti64x4(_mm512_set1_epi16(int16_t(a)), _mm256_set1_epi16(int16_t(b)), 1);
}

// int16 lanes 8i..8i + 7 take index a + i (i < 4).
TC_GGML_VNNI inline __m512i Quarters16(int a) {
  const int64_t r = 0x0001000100010001LL;
  return _mm512_setr_epi64(r * a, r * a, r * (a + 1), r * (a + 1), r * (a + 2), r * (a + 2),
                           r * (a + 3), r * (a + 3));
}

template <bool kQ5, int MR>
TC_GGML_VNNI void DotQ45KVnni(const uint8_t* row, const XK& x, float* out) {
  constexpr int kBytes = kQ5 ? Q5_K::kBytes : Q4_K::kBytes, kQs = kQ5 ? 48 : 16;
  const int64_t k = x.k, chunks = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0xF), one = _mm512_set1_epi8(1);
  // Low nibbles in the lower half (group 2p), high in the upper (2p + 1).
  const __m512i nib = Halves16(0, 4);
  __m512 acc[MR];
  __m128 accm[MR];
  for (int j = 0; j < MR; ++j) {
    acc[j] = _mm512_setzero_ps();
    accm[j] = _mm_setzero_ps();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * kBytes;
    alignas(16) uint8_t sm[16];
    UnpackK4(b + 4, sm);
    const __m128i sm8 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
    const __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm8));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm8, 8));
    // d and dmin by one vcvtph2ps: scalar fp16 conversions cost as much as
    // the chunk's dots.
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(int(Le32(b))));
    __m512i hb;
    if constexpr (kQ5)
      hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)));
    __m512i sumi[MR];
    for (int j = 0; j < MR; ++j) sumi[j] = _mm512_setzero_si512();
    TC_UNROLL
    for (int p = 0; p < 4; ++p) {
      const __m512i raw = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kQs + 32 * p)));
      __m512i q = _mm512_and_si512(_mm512_srlv_epi16(raw, nib), m4);
      if constexpr (kQ5) {
        const __m512i bit =
            _mm512_and_si512(_mm512_srlv_epi16(hb, Halves16(2 * p, 2 * p + 1)), one);
        q = _mm512_or_si512(q, _mm512_slli_epi16(bit, 4));
      }
      const __m512i scv = _mm512_permutexvar_epi16(Halves16(2 * p, 2 * p + 1), sc);
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        const __m512i xv = _mm512_loadu_si512(x.q + j * k + c * 256 + 64 * p);
        sumi[j] = _mm512_dpwssd_epi32(sumi[j], _mm512_maddubs_epi16(q, xv), scv);
      }
    }
    TC_UNROLL
    for (int j = 0; j < MR; ++j) {
      const __m128 s = _mm_mul_ps(dm, _mm_set1_ps(x.d[j * chunks + c]));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[j]), _mm512_broadcastss_ps(s), acc[j]);
      const __m128i bs =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bs32 + j * (k / 32) + c * 8));
      accm[j] = _mm_fnmadd_ps(_mm_cvtepi32_ps(_mm_madd_epi16(mins, bs)), _mm_shuffle_ps(s, s, 0x55),
                              accm[j]);
    }
  }
  TC_UNROLL
  for (int j = 0; j < MR; ++j)
    out[j] = HsumK512(_mm512_add_ps(acc[j], _mm512_zextps128_ps512(accm[j])));
}

// Prefill's MR rows of x (MR % 4 == 0) for GemmQ45KVnni: the codes as XK's,
// and per chunk c the rows' scales d[c * MR + j] and their code sums per 32
// at bs32[(c * MR + j) * 8 ..], so that one load serves several rows.
struct XKT {
  const int8_t* q;
  const float* d;
  const int16_t* bs32;
  int64_t k;
};

// DotQ45KVnni for prefill: each row of x gets the same integer lanes and
// the same fp32 operations in the same order as DotQ45KVnni<1> (so the same
// bits), with each chunk's per-row epilogue shared across rows: the scales
// d * x-scale for MR rows in one multiply, and the mins' dots for four rows
// in one vpmaddwd, their fp32 lanes side by side in one register.
template <bool kQ5, int MR>
TC_GGML_VNNI void GemmQ45KVnni(const uint8_t* row, const XKT& x, float* out) {
  static_assert(MR % 4 == 0);
  constexpr int kBytes = kQ5 ? Q5_K::kBytes : Q4_K::kBytes, kQs = kQ5 ? 48 : 16;
  const int64_t k = x.k, chunks = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0xF), one = _mm512_set1_epi8(1);
  const __m512i nib = Halves16(0, 4);
  const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[MR], accm[MR / 4];
  for (int j = 0; j < MR; ++j) acc[j] = _mm512_setzero_ps();
  for (int t = 0; t < MR / 4; ++t) accm[t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * kBytes;
    alignas(16) uint8_t sm[16];
    UnpackK4(b + 4, sm);
    const __m128i sm8 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
    const __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm8));
    const __m512i mins = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_srli_si128(sm8, 8)));
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(int(Le32(b))));
    __m512i hb;
    if constexpr (kQ5)
      hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)));
    __m512i sumi[MR];
    for (int j = 0; j < MR; ++j) sumi[j] = _mm512_setzero_si512();
    TC_UNROLL
    for (int p = 0; p < 4; ++p) {
      const __m512i raw = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kQs + 32 * p)));
      __m512i q = _mm512_and_si512(_mm512_srlv_epi16(raw, nib), m4);
      if constexpr (kQ5) {
        const __m512i bit =
            _mm512_and_si512(_mm512_srlv_epi16(hb, Halves16(2 * p, 2 * p + 1)), one);
        q = _mm512_or_si512(q, _mm512_slli_epi16(bit, 4));
      }
      const __m512i scv = _mm512_permutexvar_epi16(Halves16(2 * p, 2 * p + 1), sc);
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        const __m512i xv = _mm512_loadu_si512(x.q + j * k + c * 256 + 64 * p);
        sumi[j] = _mm512_dpwssd_epi32(sumi[j], _mm512_maddubs_epi16(q, xv), scv);
      }
    }
    // d * x-scale and dmin * x-scale per row: DotQ45KVnni's s, lanes 0, 1.
    alignas(64) float sd[MR];
    TC_UNROLL
    for (int t = 0; t < MR / 4; ++t) {
      const __m128 xd = _mm_loadu_ps(x.d + c * MR + 4 * t);
      _mm_store_ps(sd + 4 * t, _mm_mul_ps(_mm_shuffle_ps(dm, dm, 0), xd));
      const __m512 smin = _mm512_permutexvar_ps(
          quad, _mm512_castps128_ps512(_mm_mul_ps(_mm_shuffle_ps(dm, dm, 0x55), xd)));
      const __m512i bs = _mm512_loadu_si512(x.bs32 + (c * MR + 4 * t) * 8);
      accm[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(mins, bs)), smin, accm[t]);
    }
    TC_UNROLL
    for (int j = 0; j < MR; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[j]), _mm512_set1_ps(sd[j]), acc[j]);
  }
  alignas(64) float am[4 * MR];
  for (int t = 0; t < MR / 4; ++t) _mm512_store_ps(am + 16 * t, accm[t]);
  TC_UNROLL
  for (int j = 0; j < MR; ++j)
    out[j] = HsumK512(_mm512_add_ps(acc[j], _mm512_zextps128_ps512(_mm_load_ps(am + 4 * j))));
}

template <int MR>
TC_GGML_VNNI void DotQ6KVnni(const uint8_t* row, const XK& x, float* out) {
  const int64_t k = x.k, chunks = k / 256;
  const __m512i m4 = _mm512_set1_epi8(0xF), m3 = _mm512_set1_epi8(0x30);
  // Groups 4n, 4n + 1 (low nibbles): qh's bits 0-1 and 2-3 up to 4-5;
  // groups 4n + 2, 4n + 3 (high): bits 4-5 and 6-7 down.
  const __m512i up = Halves16(4, 2), down = Halves16(0, 2);
  __m512 acc[MR];
  for (int j = 0; j < MR; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* b = row + c * Q6_K::kBytes;
    const float d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b[208] | b[209] << 8)));
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
    const __m512i sc = _mm512_castsi256_si512(sc16);
    __m512i sumi[MR];
    {
      const __m512i neg = _mm512_zextsi256_si512(
          _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5)));
      TC_UNROLL
      for (int j = 0; j < MR; ++j)
        sumi[j] = _mm512_dpwssd_epi32(
            _mm512_setzero_si512(), neg,
            _mm512_zextsi256_si512(_mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(x.bs16 + j * (k / 16) + c * 16))));
    }
    TC_UNROLL
    for (int n = 0; n < 2; ++n) {
      const __m512i ql = _mm512_loadu_si512(b + 64 * n);
      const __m512i qh = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * n)));
      // vpternlog 0xF8: a | (b & c).
      const __m512i lo =
          _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_sllv_epi16(qh, up), m3), ql, m4, 0xF8);
      const __m512i hi = _mm512_ternarylogic_epi32(
          _mm512_and_si512(_mm512_srlv_epi16(qh, down), m3), _mm512_srli_epi16(ql, 4), m4, 0xF8);
      // 8 lanes per sub-block of 16: scales 8n .. 8n + 3, then 8n + 4 ..
      const __m512i sl = _mm512_permutexvar_epi16(Quarters16(8 * n), sc);
      const __m512i sh = _mm512_permutexvar_epi16(Quarters16(8 * n + 4), sc);
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        const int8_t* xq = x.q + j * k + c * 256 + 128 * n;
        sumi[j] =
            _mm512_dpwssd_epi32(sumi[j], _mm512_maddubs_epi16(lo, _mm512_loadu_si512(xq)), sl);
        sumi[j] =
            _mm512_dpwssd_epi32(sumi[j], _mm512_maddubs_epi16(hi, _mm512_loadu_si512(xq + 64)), sh);
      }
    }
    TC_UNROLL
    for (int j = 0; j < MR; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[j]), _mm512_set1_ps(d * x.d[j * chunks + c]),
                               acc[j]);
  }
  TC_UNROLL
  for (int j = 0; j < MR; ++j) out[j] = HsumK512(acc[j]);
}

}  // namespace torchchat::kernels::ggml
