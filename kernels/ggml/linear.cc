#include "kernels/ggml/linear.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/ggml/formats.h"
#include "kernels/tile_gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include "kernels/ggml/blocks32_vnni.h"
#include "kernels/ggml/formats_avx2.h"
#include "kernels/ggml/kquants_x86.h"
#define TC_GGML_X86 1
#else
#define TC_GGML_X86 0
#endif

// Fixed-count loops over accumulator arrays must be fully unrolled, or gcc -O2
// keeps the accumulators in memory and every FMA waits on a store-forward.
#define TC_UNROLL _Pragma("GCC unroll 16")

namespace torchchat::kernels::ggml {
namespace {

// Float formats: from this many rows of x, dequantized tiles (the
// conversion is shared by the rows), below it the float rows kernels, which
// sum in the tiles' order: the same bits either way.
constexpr int64_t kTileMinM = 8;
// Block formats: below this many rows of x (decode, a speculative draft's
// check, a server step's decode rows) x is rounded and the integer rows
// kernels run, int8 (four rows of x per weight row) or int16. From it
// (prefill), a format with an int8 GEMM (Kernels::gemm8) runs it on x
// rounded the same way, with the same bits per row, so its rows' bits do
// not depend on m at all; the others (Q3_K, and int16 x) take the exact
// fp32 tiles, and every row of a call takes the same path, so a row's bits
// are the same in any call of fewer rows. The rows kernels themselves were
// slower than the tiles at prefill: eager prefill of the built-in model
// (Q4_1, k = 576) ran 296 tok/s against the tiles' 483 (Zen 4, 2 threads).
constexpr int64_t kRowsMaxM = 32;
// The decode kernels read one weight row at a time, front to back, and
// leave prefetching to the hardware: reading 2 or 4 rows at once (to share
// each load of x) or prefetching in software ran 6-15 GB/s from DRAM on a
// 128K-row Q6_K output layer, one row 23-28 GB/s (Zen 4, 2 threads; the
// read bandwidth there is ~32 GB/s). The float rows keep their own
// prefetch distance.
constexpr int kPrefetchBytes = 512;

struct Job {
  const float* x;  // [m, k]
  int64_t m, k;
  const uint8_t* w;
  int64_t n, row_bytes;
  const float* bias;
  float* y;
  // Decode with int16 x: per row of x, k codes, and per 16 elements the
  // scale of their group of 32 (xsc16) and their fp32 sum (xs16).
  const int16_t* xq = nullptr;
  const float* xsc16 = nullptr;
  const float* xs16 = nullptr;
  // Decode with int8 x: the same scales and sums, and k codes per row.
  const int8_t* xq8 = nullptr;
  // Int8 x's code sums per 32 (xbs32). 256-element formats' int8 x (rounded
  // per 256, as llama.cpp's Q8_K): per row of x, per 256 its scale (xd), per
  // 16 the sums of its codes (xbs16). xsc16 and xs16 then hold the same per
  // 16.
  const float* xd = nullptr;
  const int16_t* xbs16 = nullptr;
  const int16_t* xbs32 = nullptr;
  // Prefill's int8 GEMM: xd and xbs32 again, rows in groups of kGemmMR,
  // each group's by chunk (XKT).
  const float* xdT = nullptr;
  const int16_t* xbs32T = nullptr;
};

// The rows of x GemmQ45KVnni takes at once (XKT's groups).
constexpr int kGemmMR = 8;

using RowsFn = void (*)(const Job&, int64_t n0, int64_t n1);
using DequantFn = void (*)(const uint8_t* row, int64_t k, float* out);

// ---------------------------------------------------------------- scalar ---

template <class F>
void DequantRowScalar(const uint8_t* row, int64_t k, float* out) {
  float s[F::kElems / 16], m[F::kElems / 16];
  int16_t c[32];
  for (int64_t b = 0; b < k / F::kElems; ++b) {
    const uint8_t* blk = row + b * F::kBytes;
    F::Scales(blk, s, m);
    for (int g = 0; g < F::kElems / 32; ++g) {
      F::Codes(blk, g, c);
      float* o = out + b * F::kElems + g * 32;
      for (int j = 0; j < 32; ++j) o[j] = s[2 * g + j / 16] * float(c[j]) + m[2 * g + j / 16];
    }
  }
}

// Exact: x in fp32 against the dequantized weights.
template <class F>
void RowsScalar(const Job& a, int64_t n0, int64_t n1) {
  std::vector<float> wrow(size_t(a.k));
  for (int64_t n = n0; n < n1; ++n) {
    DequantRowScalar<F>(a.w + n * a.row_bytes, a.k, wrow.data());
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.k;
      float acc = 0.f;
      for (int64_t e = 0; e < a.k; ++e) acc += wrow[e] * x[e];
      a.y[i * a.n + n] = acc + (a.bias ? a.bias[n] : 0.f);
    }
  }
}

// F16, BF16 and F32 rows: element e is the e-th value of the row.
struct F16 {
  static constexpr Type kType = kF16;
  static float At(const uint8_t* row, int64_t e) { return Half(row + 2 * e); }
  static constexpr int kSize = 2;
};
struct BF16 {
  static constexpr Type kType = kBF16;
  static float At(const uint8_t* row, int64_t e) {
    uint16_t h;
    std::memcpy(&h, row + 2 * e, 2);
    const uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  static constexpr int kSize = 2;
};
struct F32 {
  static constexpr Type kType = kF32;
  static float At(const uint8_t* row, int64_t e) {
    float f;
    std::memcpy(&f, row + 4 * e, 4);
    return f;
  }
  static constexpr int kSize = 4;
};

template <class F>
void DequantFloatScalar(const uint8_t* row, int64_t k, float* out) {
  for (int64_t e = 0; e < k; ++e) out[e] = F::At(row, e);
}

template <class F>
void FloatRowsScalar(const Job& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.w + n * a.row_bytes;
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.k;
      float acc = 0.f;
      for (int64_t e = 0; e < a.k; ++e) acc += F::At(row, e) * x[e];
      a.y[i * a.n + n] = acc + (a.bias ? a.bias[n] : 0.f);
    }
  }
}

#if TC_GGML_X86
// ------------------------------------------------------------------ AVX2 ---

TC_GGML_AVX2 inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TC_GGML_AVX2 inline float Hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TC_GGML_AVX2 inline int HsumInt(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// x's block b of 32 rounded to integers of at most `limit` (elements 0..31
// in i[0..3]), its scale max|x| / limit in sc16 twice (once per half), and
// the sums per 16 of the rounded values times the scale in s16: the
// offsets' share m . sum(x') then matches the codes' dots, so the product
// is w . x' exactly, and x's rounding error meets (code - offset), not the
// larger unsigned code. False if the block is not finite or too small for
// limit / max to be finite: the caller then uses the exact tiles.
TC_GGML_AVX2 inline bool RoundBlock(const float* x, int64_t b, float limit, __m256i* i, float* sc16,
                                    float* s16) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 v[4];
  TC_UNROLL
  for (int t = 0; t < 4; ++t) v[t] = _mm256_loadu_ps(x + b * 32 + 8 * t);
  const __m256 amax =
      _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                    _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
  // vmaxps drops a NaN operand in one of its two places: look for them.
  const __m256 nan = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v[0], v[0], _CMP_UNORD_Q),
                                               _mm256_cmp_ps(v[1], v[1], _CMP_UNORD_Q)),
                                  _mm256_or_ps(_mm256_cmp_ps(v[2], v[2], _CMP_UNORD_Q),
                                               _mm256_cmp_ps(v[3], v[3], _CMP_UNORD_Q)));
  const float mx = Hmax(amax);
  if (_mm256_movemask_ps(nan) != 0 || !(mx <= 3.0e38f) || (mx != 0.f && mx < 1e-30f)) return false;
  const __m256 inv = _mm256_set1_ps(mx == 0.f ? 0.f : limit / mx);
  TC_UNROLL
  for (int t = 0; t < 4; ++t) i[t] = _mm256_cvtps_epi32(_mm256_mul_ps(v[t], inv));
  const float d = mx / limit;
  sc16[2 * b] = sc16[2 * b + 1] = d;
  s16[2 * b] = d * float(HsumInt(_mm256_add_epi32(i[0], i[1])));
  s16[2 * b + 1] = d * float(HsumInt(_mm256_add_epi32(i[2], i[3])));
  return true;
}

// One row of x (k floats) to int16 per block of 32 (RoundBlock at 32767:
// an error of at most 2^-16 of the block's largest value per element).
TC_GGML_AVX2 bool QuantizeX(const float* x, int64_t k, int16_t* q, float* sc16, float* s16) {
  for (int64_t b = 0; b < k / 32; ++b) {
    __m256i i[4];
    if (!RoundBlock(x, b, 32767.f, i, sc16, s16)) return false;
    // packs interleaves 128-bit lanes; the permute restores element order.
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[0], i[1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[2], i[3]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32 + 16), hi);
  }
  return true;
}

// As QuantizeX, to int8 (RoundBlock at 127, as llama.cpp's Q8_0
// activations): at most 1/254 of the block's largest value per element,
// and twice the integer work fits in each instruction. bs32: the codes' sum
// per block.
TC_GGML_AVX2 bool QuantizeX8(const float* x, int64_t k, int8_t* q, float* sc16, float* s16,
                             int16_t* bs32) {
  for (int64_t b = 0; b < k / 32; ++b) {
    __m256i i[4];
    if (!RoundBlock(x, b, 127.f, i, sc16, s16)) return false;
    bs32[b] = int16_t(
        HsumInt(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]))));
    // Two packs interleave 32-bit groups across the 128-bit lanes; one
    // permute of dwords restores element order.
    const __m256i w =
        _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32),
                        _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  return true;
}

// x to int8 per chunk of 256 for the 256-element formats (K-quants,
// IQ4_XS), as llama.cpp's Q8_K: one scale max|x| / 127 per 256 (an error of
// at most 1/254 of the chunk's largest |x| per element), the codes' sums per
// 16 and per 32, and for the generic loops each 16's scale and scaled sum.
// False where RoundBlock's would be.
TC_GGML_AVX2 bool QuantizeX8K(const float* x, int64_t k, int8_t* q, float* xd, int16_t* bs16,
                              int16_t* bs32, float* sc16, float* s16) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t c = 0; c < k / 256; ++c) {
    const float* xc = x + c * 256;
    __m256 amax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (int t = 0; t < 32; ++t) {
      const __m256 v = _mm256_loadu_ps(xc + 8 * t);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // vmaxps may drop a NaN
    }
    const float mx = Hmax(amax);
    if (_mm256_movemask_ps(nan) != 0 || !(mx <= 3.0e38f) || (mx != 0.f && mx < 1e-30f))
      return false;
    const __m256 inv = _mm256_set1_ps(mx == 0.f ? 0.f : 127.f / mx);
    const float d = mx / 127.f;
    xd[c] = d;
    for (int b = 0; b < 8; ++b) {
      __m256i i[4];
      TC_UNROLL
      for (int t = 0; t < 4; ++t)
        i[t] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xc + 32 * b + 8 * t), inv));
      const __m256i w =
          _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(q + c * 256 + 32 * b),
          _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      const int s0 = HsumInt(_mm256_add_epi32(i[0], i[1]));
      const int s1 = HsumInt(_mm256_add_epi32(i[2], i[3]));
      const int64_t h = c * 16 + 2 * b;
      bs16[h] = int16_t(s0);
      bs16[h + 1] = int16_t(s1);
      bs32[c * 8 + b] = int16_t(s0 + s1);
      sc16[h] = sc16[h + 1] = d;
      s16[h] = d * float(s0);
      s16[h + 1] = d * float(s1);
    }
  }
  return true;
}

// A group's scale per 8 int32 lanes: lanes 0..3 hold elements 0..15.
template <class F>
TC_GGML_AVX2 inline __m256 GroupScale(const float* ws, int g) {
  if constexpr (F::kScale16)
    return _mm256_set_m128(_mm_broadcast_ss(ws + 2 * g + 1), _mm_broadcast_ss(ws + 2 * g));
  return _mm256_broadcast_ss(ws + 2 * g);
}

// The decode loop, by chunk of 256 elements (Avx2<F>: a K-quant block, or
// eight 32-element blocks). Per chunk and weight row: the 16 half-scales
// times x's group scales (ws), and the offsets' share m . sum(x) as one
// vector FMA; per group of 32: the codes' exact integer dot with x
// (two vpmaddwd), then one float FMA (two where halves differ in scale).
// R weight rows at once would share each load of x; RowsAvx2 reads one at
// a time, which streams faster from DRAM (kPrefetchBytes).
template <class F, int R>
TC_GGML_AVX2 inline void ChunksAvx2(const Job& a, int64_t n, int64_t i, __m256* acc, __m256* macc) {
  using V = Avx2<F>;
  const int16_t* xq = a.xq + i * a.k;
  const float* xsc16 = a.xsc16 + i * (a.k / 16);
  const float* xs16 = a.xs16 + i * (a.k / 16);
  for (int64_t c = 0; c < a.k / 256; ++c) {
    const uint8_t* ch[R];
    alignas(32) float ws[R][16];
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      ch[r] = a.w + (n + r) * a.row_bytes + c * V::kChunkBytes;
      alignas(32) float sc[16], mn[16];
      V::ChunkScales(ch[r], sc, mn);
      const float* xs = xsc16 + c * 16;
      _mm256_store_ps(ws[r], _mm256_mul_ps(_mm256_load_ps(sc), _mm256_loadu_ps(xs)));
      _mm256_store_ps(ws[r] + 8, _mm256_mul_ps(_mm256_load_ps(sc + 8), _mm256_loadu_ps(xs + 8)));
      if constexpr (F::kMin) {
        const float* sum = xs16 + c * 16;
        macc[r] = _mm256_fmadd_ps(_mm256_load_ps(mn), _mm256_loadu_ps(sum), macc[r]);
        macc[r] = _mm256_fmadd_ps(_mm256_load_ps(mn + 8), _mm256_loadu_ps(sum + 8), macc[r]);
      }
    }
    TC_UNROLL
    for (int g = 0; g < 8; ++g) {
      const int16_t* xg = xq + c * 256 + g * 32;
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 16));
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        __m256i q[2];
        V::Codes(ch[r], g, q);
        const __m256i p0 = _mm256_madd_epi16(q[0], x0), p1 = _mm256_madd_epi16(q[1], x1);
        if constexpr (F::kScale16) {
          acc[r] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(&ws[r][2 * g]), acc[r]);
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(&ws[r][2 * g + 1]),
                                   acc[r]);
        } else {
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1)),
                                   _mm256_broadcast_ss(&ws[r][2 * g]), acc[r]);
        }
      }
    }
  }
}

// What is left after the whole chunks: 32-element blocks only (a K-quant
// row is whole chunks), with the scalar scales.
template <class F, int R>
TC_GGML_AVX2 inline void TailAvx2(const Job& a, int64_t n, int64_t i, __m256* acc, float* mtail) {
  if constexpr (F::kElems == 32) {
    const int16_t* xq = a.xq + i * a.k;
    const float* xsc16 = a.xsc16 + i * (a.k / 16);
    const float* xs16 = a.xs16 + i * (a.k / 16);
    for (int64_t b = a.k / 256 * 8; b < a.k / 32; ++b) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * 32));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * 32 + 16));
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = a.w + (n + r) * a.row_bytes + b * F::kBytes;
        float s[2], m[2];
        F::Scales(blk, s, m);
        mtail[r] += m[0] * xs16[2 * b] + m[1] * xs16[2 * b + 1];
        __m256i q[2];
        Avx2<F>::Codes(blk, 0, q);
        const __m256i p =
            _mm256_add_epi32(_mm256_madd_epi16(q[0], x0), _mm256_madd_epi16(q[1], x1));
        acc[r] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s[0] * xsc16[2 * b]), acc[r]);
      }
    }
  }
}

template <class F, int R>
TC_GGML_AVX2 inline void GroupAvx2(const Job& a, int64_t n, int64_t i) {
  __m256 acc[R], macc[R];
  float mtail[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) {
    acc[r] = macc[r] = _mm256_setzero_ps();
    mtail[r] = 0.f;
  }
  ChunksAvx2<F, R>(a, n, i, acc, macc);
  TailAvx2<F, R>(a, n, i, acc, mtail);
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.n + n + r] =
        Hsum(_mm256_add_ps(acc[r], macc[r])) + mtail[r] + (a.bias ? a.bias[n + r] : 0.f);
}

template <class F>
TC_GGML_AVX2 void RowsAvx2(const Job& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GroupAvx2<F, 1>(a, n, i);
}

// The int8 loops' 32-element blocks past the whole chunks (a K-quant row is
// whole chunks), with the scalar scales: into acc (codes) and mtail
// (offsets), for weight row n and x rows i0..i0 + MR - 1.
template <class F, int MR>
TC_GGML_AVX2 inline void Tail8(const Job& a, int64_t n, int64_t i0, __m256* acc, float* mtail) {
  if constexpr (F::kElems == 32) {
    using V = Avx2<F>;
    const int64_t k = a.k;
    const int8_t* xq = a.xq8 + i0 * k;
    const float* xsc16 = a.xsc16 + i0 * (k / 16);
    const float* xs16 = a.xs16 + i0 * (k / 16);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = k / 256 * 8; b < k / 32; ++b) {
      const uint8_t* blk = a.w + n * a.row_bytes + b * F::kBytes;
      float s[2], m[2];
      F::Scales(blk, s, m);
      const __m256i q = V::Bytes(blk, 0);
      const __m256i qa = V::kSigned ? _mm256_sign_epi8(q, q) : q;
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        const int64_t r16 = j * (k / 16) + 2 * b;
        mtail[j] += m[0] * xs16[r16] + m[1] * xs16[r16 + 1];
        __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + j * k + b * 32));
        if constexpr (V::kSigned) x = _mm256_sign_epi8(x, q);
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, x), ones);
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s[0] * xsc16[r16]), acc[j]);
      }
    }
  }
}

// The int8 loop: one weight row against MR rows of x (decode has one;
// prefill takes them MR at a time, so each group's codes are unpacked once
// for MR dots). Per chunk: the 16 half-scales times each x row's scales, and
// the offsets' share m . sum(x') as vector FMAs; per group of 32 and x row:
// one vpmaddubsw, one vpmaddwd against ones, one FMA whose lanes carry each
// half's scale.
template <class F, int MR>
TC_GGML_AVX2 inline void Group8Avx2(const Job& a, int64_t n, int64_t i0) {
  using V = Avx2<F>;
  const int64_t k = a.k;
  const int8_t* xq = a.xq8 + i0 * k;
  const float* xsc16 = a.xsc16 + i0 * (k / 16);
  const float* xs16 = a.xs16 + i0 * (k / 16);
  const uint8_t* row = a.w + n * a.row_bytes;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR], macc[MR];
  float mtail[MR];
  TC_UNROLL
  for (int j = 0; j < MR; ++j) {
    acc[j] = macc[j] = _mm256_setzero_ps();
    mtail[j] = 0.f;
  }
  for (int64_t c = 0; c < k / 256; ++c) {
    const uint8_t* ch = row + c * V::kChunkBytes;
    alignas(32) float ws[MR][16];
    alignas(32) float sc[16], mn[16];
    V::ChunkScales(ch, sc, mn);
    TC_UNROLL
    for (int j = 0; j < MR; ++j) {
      const float* xs = xsc16 + j * (k / 16) + c * 16;
      _mm256_store_ps(ws[j], _mm256_mul_ps(_mm256_load_ps(sc), _mm256_loadu_ps(xs)));
      _mm256_store_ps(ws[j] + 8, _mm256_mul_ps(_mm256_load_ps(sc + 8), _mm256_loadu_ps(xs + 8)));
      if constexpr (F::kMin) {
        const float* sum = xs16 + j * (k / 16) + c * 16;
        macc[j] = _mm256_fmadd_ps(_mm256_load_ps(mn), _mm256_loadu_ps(sum), macc[j]);
        macc[j] = _mm256_fmadd_ps(_mm256_load_ps(mn + 8), _mm256_loadu_ps(sum + 8), macc[j]);
      }
    }
    TC_UNROLL
    for (int g = 0; g < 8; ++g) {
      const __m256i q = V::Bytes(ch, g);
      // Signed codes: |q| against x with q's sign (vpmaddubsw is unsigned
      // by signed). No pair overflows int16: |q| <= 128, |x| <= 127.
      const __m256i qa = V::kSigned ? _mm256_sign_epi8(q, q) : q;
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        __m256i x =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + j * k + c * 256 + g * 32));
        if constexpr (V::kSigned) x = _mm256_sign_epi8(x, q);
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, x), ones);
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), GroupScale<F>(ws[j], g), acc[j]);
      }
    }
  }
  Tail8<F, MR>(a, n, i0, acc, mtail);
  TC_UNROLL
  for (int j = 0; j < MR; ++j)
    a.y[(i0 + j) * a.n + n] =
        Hsum(_mm256_add_ps(acc[j], macc[j])) + mtail[j] + (a.bias ? a.bias[n] : 0.f);
}

// Rows of x four at a time, each weight row read once per call.
constexpr int kMR = 4;

// Prefill's rows of x in blocks of kMB (128 KB of int8 x at k = 2048, in
// L2), each block against the task's weight rows (a few KB, in L1).
constexpr int64_t kMB = 64;

using GroupFn = void (*)(const Job& a, int64_t n, int64_t i0);

// The int8 rows loop of every path and format: Many computes one weight row
// against kMR rows of x, One against one, with the same sums per row.
template <GroupFn Many, GroupFn One>
void Rows8(const Job& a, int64_t n0, int64_t n1) {
  for (int64_t ib = 0; ib < a.m; ib += kMB) {
    const int64_t ie = std::min(a.m, ib + kMB);
    for (int64_t n = n0; n < n1; ++n) {
      int64_t i = ib;
      for (; i + kMR <= ie; i += kMR) Many(a, n, i);
      for (; i < ie; ++i) One(a, n, i);
    }
  }
}

// A K-quant dot (kquants_x86.h) as a GroupFn, on x rounded per 256.
template <void (*Dot)(const uint8_t*, const XK&, float*), int MR>
void GroupK(const Job& a, int64_t n, int64_t i0) {
  const int64_t k = a.k;
  const XK x{a.xq8 + i0 * k, a.xd + i0 * (k / 256), a.xbs16 + i0 * (k / 16),
             a.xbs32 + i0 * (k / 32), k};
  float out[MR];
  Dot(a.w + n * a.row_bytes, x, out);
  for (int j = 0; j < MR; ++j) a.y[(i0 + j) * a.n + n] = out[j] + (a.bias ? a.bias[n] : 0.f);
}

// Prefill's int8 GEMM for the formats with their own dots (kquants_x86.h):
// MR rows of x (MR * k bytes, in L1) against every weight row of the task,
// so each weight chunk is loaded and unpacked once per MR rows of x, and
// the rows of x left over one at a time. Dot<MR> does, for each row of x,
// exactly what Dot<1> (decode) does, so a row's result is the same bits as
// decode's, whatever m and however the rows are grouped.
template <GroupFn Many, int MR, GroupFn One>
void Gemm8(const Job& a, int64_t n0, int64_t n1) {
  int64_t i = 0;
  for (; i + MR <= a.m; i += MR)
    for (int64_t n = n0; n < n1; ++n) Many(a, n, i);
  for (; i < a.m; ++i)
    for (int64_t n = n0; n < n1; ++n) One(a, n, i);
}

// GemmQ45KVnni as a GroupFn, on rows i0.. of x in XKT's groups.
template <bool kQ5>
TC_GGML_VNNI void GroupKT(const Job& a, int64_t n, int64_t i0) {
  const int64_t k = a.k;
  const XKT x{a.xq8 + i0 * k, a.xdT + i0 * (k / 256), a.xbs32T + i0 * (k / 32), k};
  float out[kGemmMR];
  GemmQ45KVnni<kQ5, kGemmMR>(a.w + n * a.row_bytes, x, out);
  for (int j = 0; j < kGemmMR; ++j) a.y[(i0 + j) * a.n + n] = out[j] + (a.bias ? a.bias[n] : 0.f);
}

// blocks32_vnni.h's decode and GEMM as RowsFns.
template <class F>
TC_GGML_VNNI void RowsB32Vnni(const Job& a, int64_t n0, int64_t n1) {
  RowsB32<F>(X8{a.xq8, a.xsc16, a.xbs32, a.k}, a.m, a.w, a.row_bytes, a.bias, a.y, a.n, n0, n1);
}

template <class F>
TC_GGML_VNNI void GemmB32Vnni(const Job& a, int64_t n0, int64_t n1) {
  GemmB32<F>(X8{a.xq8, a.xsc16, a.xbs32, a.k}, a.m, a.w, a.row_bytes, a.bias, a.y, a.n, n0, n1);
}

// The formats blocks32_vnni.h runs: one scale per 32, no min.
template <class F>
constexpr bool kBlocks32 =
    std::is_same_v<F, Q4_0> || std::is_same_v<F, Q5_0> || std::is_same_v<F, Q8_0> ||
    std::is_same_v<F, IQ4_NL> || std::is_same_v<F, IQ4_XS>;

// ----------------------------------------------------------- AVX-512 VNNI --
// The same loop with one 512-bit dot per group of 32: the AVX2 codes,
// joined, against x's 32 int16 at once (vpdpwssd), and one FMA whose lanes
// carry each half's scale. AVX-512 without VNNI runs the AVX2 loop.

TC_GGML_VNNI inline float Hsum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return Hsum(h);
}

template <class F, int R>
TC_GGML_VNNI inline void GroupVnni(const Job& a, int64_t n, int64_t i) {
  using V = Avx2<F>;
  const int16_t* xq = a.xq + i * a.k;
  const float* xsc16 = a.xsc16 + i * (a.k / 16);
  const float* xs16 = a.xs16 + i * (a.k / 16);
  __m512 acc[R];
  __m256 macc[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm512_setzero_ps();
    macc[r] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < a.k / 256; ++c) {
    const uint8_t* ch[R];
    alignas(64) float ws[R][16];
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      ch[r] = a.w + (n + r) * a.row_bytes + c * V::kChunkBytes;
      alignas(32) float sc[16], mn[16];
      V::ChunkScales(ch[r], sc, mn);
      _mm512_store_ps(ws[r], _mm512_mul_ps(_mm512_load_ps(sc), _mm512_loadu_ps(xsc16 + c * 16)));
      if constexpr (F::kMin) {
        const float* sum = xs16 + c * 16;
        macc[r] = _mm256_fmadd_ps(_mm256_load_ps(mn), _mm256_loadu_ps(sum), macc[r]);
        macc[r] = _mm256_fmadd_ps(_mm256_load_ps(mn + 8), _mm256_loadu_ps(sum + 8), macc[r]);
      }
    }
    TC_UNROLL
    for (int g = 0; g < 8; ++g) {
      const __m512i x = _mm512_loadu_si512(xq + c * 256 + g * 32);
      TC_UNROLL
      for (int r = 0; r < R; ++r) {
        __m256i q[2];
        V::Codes(ch[r], g, q);
        const __m512i qq = _mm512_inserti64x4(_mm512_castsi256_si512(q[0]), q[1], 1);
        const __m512 p = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(_mm512_setzero_si512(), qq, x));
        __m512 sv = _mm512_set1_ps(ws[r][2 * g]);
        if constexpr (F::kScale16)
          sv = _mm512_mask_blend_ps(__mmask16(0xFF00), sv, _mm512_set1_ps(ws[r][2 * g + 1]));
        acc[r] = _mm512_fmadd_ps(p, sv, acc[r]);
      }
    }
  }
  // The 32-element blocks past the whole chunks, as in the AVX2 loop.
  __m256 tail[R];
  float mtail[R];
  TC_UNROLL
  for (int r = 0; r < R; ++r) {
    tail[r] = _mm256_setzero_ps();
    mtail[r] = 0.f;
  }
  TailAvx2<F, R>(a, n, i, tail, mtail);
  TC_UNROLL
  for (int r = 0; r < R; ++r)
    a.y[i * a.n + n + r] = Hsum512(acc[r]) + Hsum(_mm256_add_ps(macc[r], tail[r])) + mtail[r] +
                           (a.bias ? a.bias[n + r] : 0.f);
}

template <class F>
TC_GGML_VNNI void RowsVnni(const Job& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) GroupVnni<F, 1>(a, n, i);
}

// The int8 loop with 512-bit dots: two groups of 32 per vpdpbusd, and one
// FMA whose lanes carry the four halves' scales; MR rows of x as in
// Group8Avx2, and its Tail8.
template <class F, int MR>
TC_GGML_VNNI inline void Group8Vnni(const Job& a, int64_t n, int64_t i0) {
  using V = Avx2<F>;
  const int64_t k = a.k;
  const int8_t* xq = a.xq8 + i0 * k;
  const float* xsc16 = a.xsc16 + i0 * (k / 16);
  const float* xs16 = a.xs16 + i0 * (k / 16);
  const uint8_t* row = a.w + n * a.row_bytes;
  const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[MR];
  __m256 macc[MR];
  TC_UNROLL
  for (int j = 0; j < MR; ++j) {
    acc[j] = _mm512_setzero_ps();
    macc[j] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < k / 256; ++c) {
    const uint8_t* ch = row + c * V::kChunkBytes;
    alignas(64) float ws[MR][16];
    alignas(32) float sc[16], mn[16];
    V::ChunkScales(ch, sc, mn);
    TC_UNROLL
    for (int j = 0; j < MR; ++j) {
      _mm512_store_ps(
          ws[j], _mm512_mul_ps(_mm512_load_ps(sc), _mm512_loadu_ps(xsc16 + j * (k / 16) + c * 16)));
      if constexpr (F::kMin) {
        const float* sum = xs16 + j * (k / 16) + c * 16;
        macc[j] = _mm256_fmadd_ps(_mm256_load_ps(mn), _mm256_loadu_ps(sum), macc[j]);
        macc[j] = _mm256_fmadd_ps(_mm256_load_ps(mn + 8), _mm256_loadu_ps(sum + 8), macc[j]);
      }
    }
    TC_UNROLL
    for (int g = 0; g < 8; g += 2) {
      const __m512i q =
          _mm512_inserti64x4(_mm512_castsi256_si512(V::Bytes(ch, g)), V::Bytes(ch, g + 1), 1);
      const __m512i qa = V::kSigned ? _mm512_abs_epi8(q) : q;
      const __mmask64 neg = V::kSigned ? _mm512_movepi8_mask(q) : 0;
      TC_UNROLL
      for (int j = 0; j < MR; ++j) {
        __m512i x = _mm512_loadu_si512(xq + j * k + c * 256 + g * 32);
        if constexpr (V::kSigned) x = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, x);
        const __m512 sv =
            _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_load_ps(ws[j] + 2 * g)));
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sv, acc[j]);
      }
    }
  }
  __m256 tail[MR];
  float mtail[MR];
  TC_UNROLL
  for (int j = 0; j < MR; ++j) {
    tail[j] = _mm256_setzero_ps();
    mtail[j] = 0.f;
  }
  Tail8<F, MR>(a, n, i0, tail, mtail);
  TC_UNROLL
  for (int j = 0; j < MR; ++j)
    a.y[(i0 + j) * a.n + n] = Hsum512(acc[j]) + Hsum(_mm256_add_ps(macc[j], tail[j])) + mtail[j] +
                              (a.bias ? a.bias[n] : 0.f);
}

// Each format's int8 rows: the K-quants of Q4_K_M files through their own
// dots, the rest through the generic loops.
template <class F>
constexpr RowsFn Rows8Avx2() {
  if constexpr (std::is_same_v<F, Q4_K>)
    return Rows8<GroupK<DotQ45KAvx2<false, kMR>, kMR>, GroupK<DotQ45KAvx2<false, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q5_K>)
    return Rows8<GroupK<DotQ45KAvx2<true, kMR>, kMR>, GroupK<DotQ45KAvx2<true, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q6_K>)
    return Rows8<GroupK<DotQ6KAvx2<kMR>, kMR>, GroupK<DotQ6KAvx2<1>, 1>>;
  if constexpr (std::is_same_v<F, IQ4_XS>)
    return Rows8<GroupK<DotIQ4XSAvx2<kMR>, kMR>, GroupK<DotIQ4XSAvx2<1>, 1>>;
  return Rows8<Group8Avx2<F, kMR>, Group8Avx2<F, 1>>;
}

template <class F>
constexpr RowsFn Rows8Vnni() {
  if constexpr (std::is_same_v<F, Q4_K>)
    return Rows8<GroupK<DotQ45KVnni<false, kMR>, kMR>, GroupK<DotQ45KVnni<false, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q5_K>)
    return Rows8<GroupK<DotQ45KVnni<true, kMR>, kMR>, GroupK<DotQ45KVnni<true, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q6_K>)
    return Rows8<GroupK<DotQ6KVnni<kMR>, kMR>, GroupK<DotQ6KVnni<1>, 1>>;
  if constexpr (kBlocks32<F>) return RowsB32Vnni<F>;
  return Rows8<Group8Vnni<F, kMR>, Group8Vnni<F, 1>>;
}

// Prefill's GEMM where a format has one (nullptr: it keeps the fp32 tiles):
// the decode dots on several rows of x at once. AVX2's 16 registers hold
// the accumulators of 4 rows of x; AVX-512's 32 hold 8. At m = 256 on a 1B's
// ffn gate/up (//kernels/ggml:linear_bench --gemm, Zen 4, 2 threads) they
// ran 1.1-2.4x the fp32 tiles (the K-quants 1.7-2.4x); Q3_K's generic loop
// did not beat them.
template <class F>
constexpr RowsFn Gemm8Avx2() {
  if constexpr (std::is_same_v<F, Q4_K>)
    return Gemm8<GroupK<DotQ45KAvx2<false, kMR>, kMR>, kMR, GroupK<DotQ45KAvx2<false, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q5_K>)
    return Gemm8<GroupK<DotQ45KAvx2<true, kMR>, kMR>, kMR, GroupK<DotQ45KAvx2<true, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q6_K>)
    return Gemm8<GroupK<DotQ6KAvx2<kMR>, kMR>, kMR, GroupK<DotQ6KAvx2<1>, 1>>;
  if constexpr (std::is_same_v<F, Q3_K>) return nullptr;  // ran 0.98x the tiles
  if constexpr (std::is_same_v<F, IQ4_XS>)
    return Gemm8<GroupK<DotIQ4XSAvx2<kMR>, kMR>, kMR, GroupK<DotIQ4XSAvx2<1>, 1>>;
  return Gemm8<Group8Avx2<F, kMR>, kMR, Group8Avx2<F, 1>>;
}

template <class F>
constexpr RowsFn Gemm8Vnni() {
  constexpr int R = kGemmMR;
  if constexpr (std::is_same_v<F, Q4_K>)
    return Gemm8<GroupKT<false>, R, GroupK<DotQ45KVnni<false, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q5_K>)
    return Gemm8<GroupKT<true>, R, GroupK<DotQ45KVnni<true, 1>, 1>>;
  if constexpr (std::is_same_v<F, Q6_K>)
    return Gemm8<GroupK<DotQ6KVnni<R>, R>, R, GroupK<DotQ6KVnni<1>, 1>>;
  if constexpr (std::is_same_v<F, Q3_K>) return nullptr;  // ran 0.75-0.92x the tiles
  if constexpr (kBlocks32<F>) return GemmB32Vnni<F>;
  return Gemm8<Group8Vnni<F, R>, R, Group8Vnni<F, 1>>;
}

bool CpuHasVnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

template <class F>
TC_GGML_AVX2 void DequantRowAvx2(const uint8_t* row, int64_t k, float* out) {
  float s[F::kElems / 16], m[F::kElems / 16];
  for (int64_t b = 0; b < k / F::kElems; ++b) {
    const uint8_t* blk = row + b * F::kBytes;
    F::Scales(blk, s, m);
    for (int g = 0; g < F::kElems / 32; ++g) {
      __m256i c[2];
      Avx2<F>::Codes(blk, g, c);
      float* o = out + b * F::kElems + g * 32;
      TC_UNROLL
      for (int h = 0; h < 2; ++h) {
        const __m256 sv = _mm256_set1_ps(s[2 * g + h]), mv = _mm256_set1_ps(m[2 * g + h]);
        const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(c[h]));
        const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(c[h], 1));
        _mm256_storeu_ps(o + 16 * h, _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), sv, mv));
        _mm256_storeu_ps(o + 16 * h + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), sv, mv));
      }
    }
  }
}

TC_GGML_AVX2 inline __m256 Load8(const uint8_t* p, F16) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
TC_GGML_AVX2 inline __m256 Load8(const uint8_t* p, BF16) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
TC_GGML_AVX2 inline __m256 Load8(const uint8_t* p, F32) {
  return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
}

// Float weights: exact fp32 products, in the lanes of the tile micro-kernel
// the same path runs from kTileMinM rows (tile_gemm.cc), so a row sums in
// one order whatever m is: A = 1, one 8-lane sum stepping by 8 (AVX2
// tiles); A = 2, two stepping by 16, added before the horizontal sum
// (AVX-512 tiles: lanes 0-7 and 8-15 of one 16-lane sum). k % 32 == 0.
template <class F, int R, int A>
TC_GGML_AVX2 inline void FloatGroupAvx2(const Job& a, int64_t n, int64_t i) {
  const float* x = a.x + i * a.k;
  __m256 acc[R][A];
  TC_UNROLL
  for (int r = 0; r < R; ++r) TC_UNROLL
  for (int h = 0; h < A; ++h) acc[r][h] = _mm256_setzero_ps();
  for (int64_t e = 0; e < a.k; e += 8 * A) {
    TC_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = a.w + (n + r) * a.row_bytes + e * F::kSize;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
      TC_UNROLL
      for (int h = 0; h < A; ++h)
        acc[r][h] = _mm256_fmadd_ps(_mm256_loadu_ps(x + e + 8 * h),
                                    Load8(p + 8 * h * F::kSize, F{}), acc[r][h]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m256 sum = A == 2 ? _mm256_add_ps(acc[r][0], acc[r][A - 1]) : acc[r][0];
    a.y[i * a.n + n + r] = Hsum(sum) + (a.bias ? a.bias[n + r] : 0.f);
  }
}

template <class F, int A>
TC_GGML_AVX2 void FloatRowsAvx2(const Job& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2)
    for (int64_t i = 0; i < a.m; ++i) FloatGroupAvx2<F, 2, A>(a, n, i);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < a.m; ++i) FloatGroupAvx2<F, 1, A>(a, n, i);
}

template <class F>
TC_GGML_AVX2 void DequantFloatAvx2(const uint8_t* row, int64_t k, float* out) {
  for (int64_t e = 0; e < k; e += 8) _mm256_storeu_ps(out + e, Load8(row + e * F::kSize, F{}));
}

bool CpuHasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif  // TC_GGML_X86

// ------------------------------------------------------------- the table ---

struct Kernels {
  RowsFn rows;  // decode
  DequantFn dequant;
  bool int16_x;            // rows read Job::xq (a block format on a SIMD path)
  RowsFn rows8 = nullptr;  // decode with int8 x (Job::xq8), where there is one
  // Prefill with int8 x, where a format has a GEMM: the same bits per row
  // as rows8, so such a format rounds x at every m.
  RowsFn gemm8 = nullptr;
};

struct Format {
  int type;
  const char* name;
  int64_t elems, bytes;
  Kernels scalar;
#if TC_GGML_X86
  Kernels avx2;
  Kernels vnni;  // AVX-512 VNNI decode; its dequantization is AVX2's
#endif
};

template <class F>
constexpr Format BlockFormat(const char* name) {
  return Format{F::kType,
                name,
                F::kElems,
                F::kBytes,
                {RowsScalar<F>, DequantRowScalar<F>, false},
#if TC_GGML_X86
                {RowsAvx2<F>, DequantRowAvx2<F>, true, Rows8Avx2<F>(), Gemm8Avx2<F>()},
                {RowsVnni<F>, DequantRowAvx2<F>, true, Rows8Vnni<F>(), Gemm8Vnni<F>()}
#endif
  };
}

template <class F>
constexpr Format FloatFormat(const char* name) {
  return Format{F::kType,
                name,
                32,  // any k % 32 == 0 (the SIMD loops step by 16)
                32 * F::kSize,
                {FloatRowsScalar<F>, DequantFloatScalar<F>, false},
#if TC_GGML_X86
                {FloatRowsAvx2<F, 1>, DequantFloatAvx2<F>, false},
                {FloatRowsAvx2<F, 2>, DequantFloatAvx2<F>, false}
#endif
  };
}

const Format kFormats[] = {
    FloatFormat<F32>("F32"),   FloatFormat<F16>("F16"),       FloatFormat<BF16>("BF16"),
    BlockFormat<Q4_0>("Q4_0"), BlockFormat<Q4_1>("Q4_1"),     BlockFormat<Q5_0>("Q5_0"),
    BlockFormat<Q5_1>("Q5_1"), BlockFormat<Q8_0>("Q8_0"),     BlockFormat<Q2_K>("Q2_K"),
    BlockFormat<Q3_K>("Q3_K"), BlockFormat<Q4_K>("Q4_K"),     BlockFormat<Q5_K>("Q5_K"),
    BlockFormat<Q6_K>("Q6_K"), BlockFormat<IQ4_NL>("IQ4_NL"), BlockFormat<IQ4_XS>("IQ4_XS"),
};

const Format* Find(int type) {
  for (const Format& f : kFormats)
    if (f.type == type) return &f;
  return nullptr;
}

enum class Path { kScalar, kAvx2, kVnni };

const char* PathName(Path p) {
  switch (p) {
    case Path::kAvx2:
      return "avx2";
    case Path::kVnni:
      return "avx512vnni";
    default:
      return "scalar";
  }
}

bool CanRun(Path p) {
#if TC_GGML_X86
  if (p == Path::kAvx2) return CpuHasAvx2();
  if (p == Path::kVnni) return CpuHasAvx2() && CpuHasVnni();
#endif
  return p == Path::kScalar;
}

Path AutoPath() {
  for (Path p : {Path::kVnni, Path::kAvx2})
    if (CanRun(p)) return p;
  return Path::kScalar;
}

// TORCHCHAT_GGML_ISA names a path (scalar, avx2, avx512vnni) this CPU runs.
Path DefaultPath() {
  const char* env = std::getenv("TORCHCHAT_GGML_ISA");
  if (env != nullptr)
    for (Path p : {Path::kScalar, Path::kAvx2, Path::kVnni})
      if (std::string(env) == PathName(p) && CanRun(p)) return p;
  return AutoPath();
}

Path active_path = DefaultPath();

// TORCHCHAT_GGML_X=int16 keeps decode's x at 16 bits (tests that compare
// ids with a dequantized model); int8 is the default.
bool DefaultX8() {
  const char* env = std::getenv("TORCHCHAT_GGML_X");
  return env == nullptr || std::string(env) != "int16";
}

bool x8 = DefaultX8();

// TORCHCHAT_GGML_PREFILL=tiles sends prefill of every block format to the
// exact fp32 tiles (benchmarks compare the two); int8 is the default.
bool DefaultPrefill8() {
  const char* env = std::getenv("TORCHCHAT_GGML_PREFILL");
  return env == nullptr || std::string(env) != "tiles";
}

bool prefill8 = DefaultPrefill8();

const Kernels& KernelsFor(const Format& f) {
#if TC_GGML_X86
  if (active_path == Path::kAvx2) return f.avx2;
  if (active_path == Path::kVnni) return f.vnni;
#endif
  return f.scalar;
}

struct Task {
  Job job;
  RowsFn rows;
  DequantFn dequant;
  const tile::MicroFn* micro;  // set: the tiled path
};

void RunTask(void* ctx, int64_t begin, int64_t end) {
  const Task& t = *static_cast<const Task*>(ctx);
  if (t.micro == nullptr) {
    t.rows(t.job, begin, end);
    return;
  }
  const Job& a = t.job;
  tile::TileRows(
      t.micro, [&](int64_t row, float* out) { t.dequant(a.w + row * a.row_bytes, a.k, out); }, a.x,
      a.m, a.k, a.n, a.bias, a.y, begin, end);
}

const char* CheckShape(const Format* f, int type, int64_t k) {
  if (f == nullptr) return "ggml linear: unsupported tensor type";
  if (k <= 0 || k % f->elems != 0 || k % 32 != 0)
    return "ggml linear: the row length is not a whole number of the type's blocks";
  (void)type;
  return nullptr;
}

}  // namespace

int64_t BlockElems(int type) {
  const Format* f = Find(type);
  return f ? f->elems : 0;
}

int64_t RowBytes(int type, int64_t k) {
  const Format* f = Find(type);
  if (CheckShape(f, type, k) != nullptr) return -1;
  return k / f->elems * f->bytes;
}

const char* TypeName(int type) {
  const Format* f = Find(type);
  return f ? f->name : "unsupported";
}

const char* Isa() { return PathName(active_path); }

const char* DecodeX() { return x8 ? "int8" : "int16"; }

bool ForceDecodeX(const char* x) {
  const std::string s = x ? x : "";
  if (s.empty()) {
    x8 = DefaultX8();
    return true;
  }
  if (s != "int8" && s != "int16") return false;
  x8 = s == "int8";
  return true;
}

const char* Prefill() { return prefill8 ? "int8" : "tiles"; }

bool ForcePrefill(const char* path) {
  const std::string s = path ? path : "";
  if (s.empty()) {
    prefill8 = DefaultPrefill8();
    return true;
  }
  if (s != "int8" && s != "tiles") return false;
  prefill8 = s == "int8";
  return true;
}

bool ForceIsa(const char* isa) {
  const std::string s = isa ? isa : "";
  if (s.empty()) {
    active_path = DefaultPath();
    return true;
  }
  for (Path p : {Path::kScalar, Path::kAvx2, Path::kVnni})
    if (s == PathName(p) && CanRun(p)) {
      active_path = p;
      return true;
    }
  return false;
}

const char* Linear(const float* x, int64_t m, const uint8_t* w, int type, int64_t n, int64_t k,
                   const float* bias, float* y, const Q4ParallelFor* pf) {
  const Format* f = Find(type);
  if (const char* err = CheckShape(f, type, k)) return err;
  if (m <= 0 || n <= 0) return nullptr;
  const Kernels& kern = KernelsFor(*f);
  Task task{Job{x, m, k, w, n, k / f->elems * f->bytes, bias, y}, kern.rows, kern.dequant, nullptr};
  const tile::MicroFn* micro = nullptr;
#if TC_GGML_X86
  if (active_path == Path::kAvx2) micro = tile::MicroAvx2();
  if (active_path == Path::kVnni) micro = tile::MicroAvx512();
#endif
  // A row's path and sums must not depend on how many rows share the call
  // (below kRowsMaxM for block formats): one id alone and the same id among
  // a speculative draft's give the same bits. Float formats run rows below
  // kTileMinM and tiles above, with the same sums in the same order.
  // A format with an int8 GEMM (Q4_K, Q5_K, Q6_K) rounds x at every m, and
  // its GEMM gives each row decode's bits: a row's result is then the same
  // in any call, prefill's included.
  const bool gemm = x8 && prefill8 && kern.gemm8 != nullptr;
  const bool rounded = kern.int16_x && (m < kRowsMaxM || gemm);
  bool tiled = !rounded && m >= kTileMinM && micro != nullptr;
  // Scratch reused across calls on this thread: decode allocates nothing.
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<int8_t> xq8;
  thread_local std::vector<float> xsc16, xs16, xd;
  thread_local std::vector<int16_t> xbs16, xbs32, xbs32T;
  thread_local std::vector<float> xdT;
  // Rows of x that cannot be rounded (not finite, or too small for
  // limit / max): each runs alone through the exact tiles afterwards.
  thread_local std::vector<int64_t> exact_rows;
  exact_rows.clear();
#if TC_GGML_X86
  if (rounded) {
    const bool int8_rows = x8 && kern.rows8 != nullptr;
    const size_t k16 = size_t(k / 16);
    xsc16.resize(size_t(m) * k16);
    xs16.resize(size_t(m) * k16);
    // int8 x for a 256-element format is rounded per 256, as llama.cpp's
    // Q8_K; per 32 otherwise.
    const bool x256 = int8_rows && f->elems == 256;
    if (int8_rows) {
      xq8.resize(size_t(m * k));
    } else {
      xq.resize(size_t(m * k));
    }
    if (int8_rows) xbs32.resize(size_t(m * (k / 32)));
    if (x256) {
      xd.resize(size_t(m * (k / 256)));
      xbs16.resize(size_t(m) * k16);
    }
    for (int64_t i = 0; i < m; ++i) {
      float* sc = xsc16.data() + i * k16;
      float* sm = xs16.data() + i * k16;
      const bool ok =
          x256 ? QuantizeX8K(x + i * k, k, xq8.data() + i * k, xd.data() + i * (k / 256),
                             xbs16.data() + i * k16, xbs32.data() + i * (k / 32), sc, sm)
          : int8_rows
              ? QuantizeX8(x + i * k, k, xq8.data() + i * k, sc, sm, xbs32.data() + i * (k / 32))
              : QuantizeX(x + i * k, k, xq.data() + i * k, sc, sm);
      if (!ok) {
        // Zero scales make the rows kernels' result for it finite (and
        // unused); the tiles below overwrite it.
        std::fill(sc, sc + k16, 0.f);
        std::fill(sm, sm + k16, 0.f);
        if (x256) {
          std::fill(xd.data() + i * (k / 256), xd.data() + (i + 1) * (k / 256), 0.f);
          std::fill(xbs16.data() + i * k16, xbs16.data() + (i + 1) * k16, int16_t(0));
        }
        if (int8_rows) {
          std::fill(xbs32.data() + i * (k / 32), xbs32.data() + (i + 1) * (k / 32), int16_t(0));
          std::fill(xq8.data() + i * k, xq8.data() + (i + 1) * k, int8_t(0));
        } else {
          std::fill(xq.data() + i * k, xq.data() + (i + 1) * k, int16_t(0));
        }
        exact_rows.push_back(i);
      }
    }
    if (x256 && m >= kRowsMaxM) {
      // The GEMM's groups of rows, chunk by chunk (XKT).
      const int64_t chunks = k / 256, groups = m / kGemmMR;
      xdT.resize(size_t(groups * kGemmMR * chunks));
      xbs32T.resize(size_t(groups * kGemmMR * chunks * 8));
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t c = 0; c < chunks; ++c)
          for (int64_t j = 0; j < kGemmMR; ++j) {
            const int64_t i = g * kGemmMR + j, t = (g * chunks + c) * kGemmMR + j;
            xdT[size_t(t)] = xd[size_t(i * chunks + c)];
            std::memcpy(xbs32T.data() + t * 8, xbs32.data() + i * (k / 32) + c * 8,
                        8 * sizeof(int16_t));
          }
      task.job.xdT = xdT.data();
      task.job.xbs32T = xbs32T.data();
    }
    if (int8_rows) {
      task.rows = m < kRowsMaxM ? kern.rows8 : kern.gemm8;
      task.job.xq8 = xq8.data();
      task.job.xbs32 = xbs32.data();
      if (x256) {
        task.job.xd = xd.data();
        task.job.xbs16 = xbs16.data();
      }
    } else {
      task.job.xq = xq.data();
    }
    task.job.xsc16 = xsc16.data();
    task.job.xs16 = xs16.data();
  }
#endif
  if (tiled) task.micro = micro;
  // ~16K weights per task keeps per-task overhead small next to the work.
  int64_t grain = std::max<int64_t>(2, (int64_t(1) << 14) / k);
  if (tiled) grain = ((grain + tile::kNR - 1) / tile::kNR) * tile::kNR;
  if (pf != nullptr && pf->run != nullptr && n > grain) {
    pf->run(pf->self, n, grain, RunTask, &task);
  } else {
    RunTask(&task, 0, n);
  }
  for (int64_t i : exact_rows) {
    Task one{Job{x + i * k, 1, k, w, n, task.job.row_bytes, bias, y + i * n}, kern.rows,
             kern.dequant, micro};
    const int64_t g = ((grain + tile::kNR - 1) / tile::kNR) * tile::kNR;
    if (pf != nullptr && pf->run != nullptr && n > g) {
      pf->run(pf->self, n, g, RunTask, &one);
    } else {
      RunTask(&one, 0, n);
    }
  }
  return nullptr;
}

const char* DequantizeRows(const uint8_t* w, int type, int64_t k, const int64_t* rows,
                           int64_t count, float* out) {
  const Format* f = Find(type);
  if (const char* err = CheckShape(f, type, k)) return err;
  const DequantFn dq = KernelsFor(*f).dequant;
  const int64_t row_bytes = k / f->elems * f->bytes;
  for (int64_t i = 0; i < count; ++i) dq(w + rows[i] * row_bytes, k, out + i * k);
  return nullptr;
}

}  // namespace torchchat::kernels::ggml
