// AVX-512 VNNI decode and prefill for the formats whose weights are one
// fp32 scale times a signed code per block of 32, with no min: Q4_0, Q5_0,
// Q8_0, IQ4_NL and IQ4_XS (whose 6-bit scale is per 32 too).
//
// Against x rounded to int8 (per 32, or per 256 for IQ4_XS), weight row n's
// product with x row i is, in this order and nothing else in fp32:
//
//   acc = 0;  for each block b:  acc = fma(float(isum_b), sw_b * dx_b, acc)
//   y = acc + bias  (+ 0 without one)
//
// isum_b = sum of code * x' over the block, exact in int32 (it is computed
// as the unsigned codes code + kO against x', minus kO * sum(x'), with x's
// code sums per 32 from the rounding). sw_b is the block's scale, dx_b x's.
// The decode kernel (RowsB32) and the GEMM (GemmB32) compute exactly that,
// so a row's bits do not depend on m or on how rows are split:
//  - decode reads one weight row at a time, front to back (as the other
//    decode loops: it streams fastest from DRAM), gets the block sums with
//    lanes over elements (one vpdpbusd per two blocks, then an integer
//    transpose-add to 16 sums), and keeps the products per block of 8
//    weight rows; the sums over blocks then run with lanes over those rows;
//  - the GEMM unpacks 16 weight rows once into unsigned codes interleaved by
//    4 bytes (panel[b][t][r]: bytes 4t..4t+3 of row r's block b), so one
//    vpdpbusd against 4 bytes of x broadcast is 4 products for each of the
//    16 rows, and each block ends in one int32 vector per row of x: no
//    horizontal sums, and each unpacked block serves every row of x.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/ggml/formats.h"
#include "kernels/ggml/formats_avx2.h"
#include "kernels/ggml/kquants_x86.h"

namespace torchchat::kernels::ggml {

// Per format: kO (the offset that makes its codes unsigned bytes), Codes(row,
// b) (block b's 32 codes + kO, element order), Scales(row, b0, cnt, out)
// (blocks b0.. b0 + cnt - 1's scales; decode and the GEMM share it, so the
// same bits).
template <class F>
struct B32;

// The fp16 scales at the start of blocks b0.. of kBytes each (cnt <= 16;
// the rest 0), by one gather: 16 scalar copies and a vector load of them
// stall on store forwarding.
template <int kBytes>
TC_GGML_VNNI inline void HalfScales(const uint8_t* row, int64_t b0, int cnt, float* out) {
  const __mmask16 live = __mmask16((1u << cnt) - 1);
  const __m512i at =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(kBytes));
  const __m512i h =
      _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, at, row + b0 * kBytes, 1);
  _mm512_storeu_ps(out, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
}

// IQ4's levels + 128, as unsigned bytes.
TC_GGML_VNNI inline __m256i Iq4Unsigned(__m256i nibbles) {
  return _mm256_xor_si256(Iq4Lookup(nibbles), _mm256_set1_epi8(char(0x80)));
}

template <>
struct B32<Q4_0> {
  static constexpr int kShift = 3;  // kO = 8
  TC_GGML_VNNI static __m256i Codes(const uint8_t* row, int64_t b) {
    return Nibbles(row + b * Q4_0::kBytes + 2);
  }
  TC_GGML_VNNI static void Scales(const uint8_t* row, int64_t b0, int cnt, float* out) {
    HalfScales<Q4_0::kBytes>(row, b0, cnt, out);
  }
};

template <>
struct B32<Q5_0> {
  static constexpr int kShift = 4;  // kO = 16
  TC_GGML_VNNI static __m256i Codes(const uint8_t* row, int64_t b) {
    const uint8_t* p = row + b * Q5_0::kBytes;
    return _mm256_or_si256(Nibbles(p + 6), FifthBits(Le32(p + 2)));
  }
  TC_GGML_VNNI static void Scales(const uint8_t* row, int64_t b0, int cnt, float* out) {
    HalfScales<Q5_0::kBytes>(row, b0, cnt, out);
  }
};

template <>
struct B32<Q8_0> {
  static constexpr int kShift = 7;  // kO = 128
  TC_GGML_VNNI static __m256i Codes(const uint8_t* row, int64_t b) {
    const __m256i q =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * Q8_0::kBytes + 2));
    return _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80)));
  }
  TC_GGML_VNNI static void Scales(const uint8_t* row, int64_t b0, int cnt, float* out) {
    HalfScales<Q8_0::kBytes>(row, b0, cnt, out);
  }
};

template <>
struct B32<IQ4_NL> {
  static constexpr int kShift = 7;
  TC_GGML_VNNI static __m256i Codes(const uint8_t* row, int64_t b) {
    return Iq4Unsigned(Nibbles(row + b * IQ4_NL::kBytes + 2));
  }
  TC_GGML_VNNI static void Scales(const uint8_t* row, int64_t b0, int cnt, float* out) {
    HalfScales<IQ4_NL::kBytes>(row, b0, cnt, out);
  }
};

// Block b is group b % 8 of chunk b / 8; its scale d * (ls - 32), as
// IQ4_XS::Scales computes it.
template <>
struct B32<IQ4_XS> {
  static constexpr int kShift = 7;
  TC_GGML_VNNI static __m256i Codes(const uint8_t* row, int64_t b) {
    return Iq4Unsigned(Nibbles(row + b / 8 * IQ4_XS::kBytes + 8 + 16 * (b % 8)));
  }
  // cnt is 8 or 16 (k % 256 == 0): one or two chunks.
  TC_GGML_VNNI static void Scales(const uint8_t* row, int64_t b0, int cnt, float* out) {
    for (int h = 0; h < 2; ++h) {
      if (8 * h >= cnt) {
        _mm256_storeu_ps(out + 8 * h, _mm256_setzero_ps());
        continue;
      }
      _mm256_storeu_ps(out + 8 * h, Iq4XsScales(row + (b0 / 8 + h) * IQ4_XS::kBytes));
    }
  }
};

// Rows of x rounded to int8: row i's k codes at q + i * k, its scale per 16
// elements at d16[i * (k / 16) ..] (a block's two halves share one), and
// its code sums per 32 at bs[i * (k / 32) ..].
struct X8 {
  const int8_t* q;
  const float* d16;
  const int16_t* bs;
  int64_t k;
};

// Blocks b0.. b0 + cnt - 1 (cnt <= 16) of one weight row against one row of
// x: the 16 exact isum_b (0 past cnt), in block order.
template <class F>
TC_GGML_VNNI inline __m512i Dots16(const uint8_t* row, const int8_t* xq, const int16_t* bs,
                                   int64_t b0, int cnt) {
  __m512i v[8];
  TC_UNROLL
  for (int p = 0; p < 8; ++p) {
    const int64_t b = b0 + 2 * p;
    if (2 * p >= cnt) {
      v[p] = _mm512_setzero_si512();
      continue;
    }
    const bool two = 2 * p + 1 < cnt;
    const __m256i lo = B32<F>::Codes(row, b);
    const __m256i hi = two ? B32<F>::Codes(row, b + 1) : _mm256_setzero_si256();
    const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    const __m512i x =
        _mm512_maskz_loadu_epi8(two ? ~__mmask64(0) : __mmask64(0xFFFFFFFFu), xq + b * 32);
    // Lanes 0-7 hold block b's eight partial sums, 8-15 block b + 1's.
    v[p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
  }
  // Pairs of vectors to four blocks per vector, four 32-bit partials each
  // (a 128-bit lane per block), then a 4x4 transpose-add within the lanes.
  __m512i a[4];
  TC_UNROLL
  for (int q = 0; q < 4; ++q)
    a[q] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * q], v[2 * q + 1], 0x88),
                            _mm512_shuffle_i32x4(v[2 * q], v[2 * q + 1], 0xDD));
  const __m512i t0 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
  const __m512i t1 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  // Lane 4l + q holds block 4q + l.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i sums = _mm512_permutexvar_epi32(order, s);
  const __m512i xs =
      _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(__mmask16((1u << cnt) - 1), bs + b0));
  return _mm512_sub_epi32(sums, _mm512_slli_epi32(xs, B32<F>::kShift));
}

// x's scales of blocks b0.. b0 + cnt - 1: every other one of its per-16.
TC_GGML_VNNI inline __m512 XScales16(const float* d16, int64_t b0, int cnt) {
  const int halves = 2 * cnt;
  const __m512 lo =
      _mm512_maskz_loadu_ps(__mmask16(halves >= 16 ? 0xFFFF : (1u << halves) - 1), d16 + 2 * b0);
  const __m512 hi = _mm512_maskz_loadu_ps(__mmask16(halves <= 16 ? 0 : (1u << (halves - 16)) - 1),
                                          d16 + 2 * b0 + 16);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_ps(lo, even, hi);
}

// 8 rows of 8 floats (rows r at p + r * stride) transposed: out[j] holds
// element j of each row.
TC_GGML_AVX2 inline void Transpose8(const float* p, int64_t stride, __m256* out) {
  __m256 r[8], t[8];
  TC_UNROLL
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(p + i * stride);
  TC_UNROLL
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  TC_UNROLL
  for (int i = 0; i < 2; ++i) {
    const __m256* a = t + 4 * i;
    r[4 * i] = _mm256_shuffle_ps(a[0], a[2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(a[0], a[2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(a[1], a[3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(a[1], a[3], 0xEE);
  }
  TC_UNROLL
  for (int i = 0; i < 4; ++i) {
    out[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
    out[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
  }
}

// Decode: weight rows [n0, n1) of w (row_bytes apart) against the m rows of
// x; y[i * ldy + n] = row n . x_i + bias[n].
template <class F>
TC_GGML_VNNI void RowsB32(const X8& x, int64_t m, const uint8_t* w, int64_t row_bytes,
                          const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t k = x.k, nb = k / 32, ng = (nb + 15) / 16, ld = ng * 16;
  // float(isum_b) and sw_b * dx_b of 8 weight rows, by row.
  thread_local std::vector<float> buf;
  buf.resize(size_t(16 * ld));
  float* p = buf.data();
  float* sc = p + 8 * ld;
  for (int64_t n = n0; n < n1; n += 8) {
    const int rows = int(std::min<int64_t>(8, n1 - n));
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xq = x.q + i * k;
      const int16_t* bs = x.bs + i * (k / 32);
      const float* d16 = x.d16 + i * (k / 16);
      for (int r = 0; r < rows; ++r) {
        const uint8_t* row = w + (n + r) * row_bytes;
        for (int64_t g = 0; g < ng; ++g) {
          const int cnt = int(std::min<int64_t>(16, nb - 16 * g));
          // The codes first: their loads are the first to touch each line.
          const __m512i is = Dots16<F>(row, xq, bs, 16 * g, cnt);
          alignas(64) float sw[16];
          B32<F>::Scales(row, 16 * g, cnt, sw);
          const __m512 s = _mm512_mul_ps(_mm512_load_ps(sw), XScales16(d16, 16 * g, cnt));
          _mm512_storeu_ps(p + r * ld + 16 * g, _mm512_cvtepi32_ps(is));
          _mm512_storeu_ps(sc + r * ld + 16 * g, s);
        }
      }
      for (int r = rows; r < 8; ++r) {
        std::fill(p + r * ld, p + (r + 1) * ld, 0.f);
        std::fill(sc + r * ld, sc + (r + 1) * ld, 0.f);
      }
      __m256 acc = _mm256_setzero_ps();
      for (int64_t b8 = 0; b8 < nb; b8 += 8) {
        __m256 col[8], scol[8];
        Transpose8(p + b8, ld, col);
        Transpose8(sc + b8, ld, scol);
        const int cnt = int(std::min<int64_t>(8, nb - b8));
        for (int j = 0; j < cnt; ++j) acc = _mm256_fmadd_ps(col[j], scol[j], acc);
      }
      alignas(32) float out[8], bv[8] = {};
      if (bias != nullptr) std::memcpy(bv, bias + n, size_t(rows) * sizeof(float));
      _mm256_store_ps(out, _mm256_add_ps(acc, _mm256_load_ps(bv)));
      std::memcpy(y + i * ldy + n, out, size_t(rows) * sizeof(float));
    }
  }
}

// Rows of x the GEMM takes per pass over an unpacked panel: 8 weight
// vectors, MR int32 and MR fp32 accumulators live in AVX-512's 32 registers.
constexpr int kB32MR = 4;

template <int MR>
TC_GGML_VNNI inline void PanelRows(const X8& x, int64_t i0, const uint8_t* panel, const float* sw,
                                   int64_t nb, int kshift, __m512* acc) {
  const int64_t k = x.k;
  TC_UNROLL
  for (int j = 0; j < MR; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pb = panel + b * 512;
    __m512i wv[8];
    TC_UNROLL
    for (int t = 0; t < 8; ++t) wv[t] = _mm512_load_si512(pb + 64 * t);
    const __m512 s = _mm512_load_ps(sw + 16 * b);
    TC_UNROLL
    for (int j = 0; j < MR; ++j) {
      const int64_t i = i0 + j;
      const int8_t* xb = x.q + i * k + 32 * b;
      __m512i is = _mm512_set1_epi32(-(int(x.bs[i * (k / 32) + b]) << kshift));
      TC_UNROLL
      for (int t = 0; t < 8; ++t) {
        int32_t x4;
        std::memcpy(&x4, xb + 4 * t, 4);
        is = _mm512_dpbusd_epi32(is, wv[t], _mm512_set1_epi32(x4));
      }
      const __m512 sx = _mm512_mul_ps(s, _mm512_set1_ps(x.d16[i * (k / 16) + 2 * b]));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), sx, acc[j]);
    }
  }
}

// Prefill: as RowsB32, 16 weight rows at a time unpacked into a panel that
// every row of x then reads.
template <class F>
TC_GGML_VNNI void GemmB32(const X8& x, int64_t m, const uint8_t* w, int64_t row_bytes,
                          const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t k = x.k, nb = k / 32, ng = (nb + 15) / 16;
  thread_local std::vector<uint8_t> panel_buf, codes_buf;
  thread_local std::vector<float> sw_buf;
  panel_buf.resize(size_t(nb * 512 + 64));
  codes_buf.resize(size_t(nb * 512));
  sw_buf.resize(size_t(nb * 16 + 16));
  uint8_t* panel =
      panel_buf.data() + (64 - reinterpret_cast<uintptr_t>(panel_buf.data()) % 64) % 64;
  uint8_t* codes = codes_buf.data();
  float* sw = sw_buf.data() + (16 - reinterpret_cast<uintptr_t>(sw_buf.data()) / 4 % 16) % 16;
  // Gather indices: dword t of each of the 16 rows of a block's codes.
  const __m512i rows16 =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(8));
  for (int64_t n = n0; n < n1; n += 16) {
    const int rows = int(std::min<int64_t>(16, n1 - n));
    // codes[b][r][32], then panel[b][t][r][4]; missing rows are zero.
    for (int r = 0; r < 16; ++r) {
      if (r >= rows) {
        for (int64_t b = 0; b < nb; ++b) std::memset(codes + (b * 16 + r) * 32, 0, 32);
        for (int64_t b = 0; b < nb; ++b) sw[b * 16 + r] = 0.f;
        continue;
      }
      const uint8_t* row = w + (n + r) * row_bytes;
      for (int64_t b = 0; b < nb; ++b)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + (b * 16 + r) * 32),
                            B32<F>::Codes(row, b));
      for (int64_t g = 0; g < ng; ++g) {
        alignas(64) float s[16];
        const int cnt = int(std::min<int64_t>(16, nb - 16 * g));
        B32<F>::Scales(row, 16 * g, cnt, s);
        for (int j = 0; j < cnt; ++j) sw[(16 * g + j) * 16 + r] = s[j];
      }
    }
    for (int64_t b = 0; b < nb; ++b) {
      TC_UNROLL
      for (int t = 0; t < 8; ++t)
        _mm512_store_si512(panel + b * 512 + 64 * t,
                           _mm512_i32gather_epi32(_mm512_add_epi32(rows16, _mm512_set1_epi32(t)),
                                                  codes + b * 512, 4));
    }
    const __mmask16 keep = __mmask16((1u << rows) - 1);
    const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(keep, bias + n) : _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + kB32MR <= m; i += kB32MR) {
      __m512 acc[kB32MR];
      PanelRows<kB32MR>(x, i, panel, sw, nb, B32<F>::kShift, acc);
      TC_UNROLL
      for (int j = 0; j < kB32MR; ++j)
        _mm512_mask_storeu_ps(y + (i + j) * ldy + n, keep, _mm512_add_ps(acc[j], bv));
    }
    for (; i < m; ++i) {
      __m512 acc[1];
      PanelRows<1>(x, i, panel, sw, nb, B32<F>::kShift, acc);
      _mm512_mask_storeu_ps(y + i * ldy + n, keep, _mm512_add_ps(acc[0], bv));
    }
  }
}

}  // namespace torchchat::kernels::ggml
