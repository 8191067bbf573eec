// AVX2 versions of formats.h's functions, by chunk of 256 elements (one
// K-quant block, or eight 32-element blocks): the kernels' unit.
//
//   Avx2<F>::kChunkBytes           bytes of one chunk
//   Avx2<F>::ChunkScales(p, s, m)  s[16], m[16]: scale and offset per 16
//                                  elements, vectorized (the 32-element
//                                  formats' eight fp16 scales in one vcvtph2ps)
//   Avx2<F>::Codes(p, g, c)        group g (0..7) of the chunk: 32 codes as
//                                  int16, elements 0..15 in c[0], 16..31 in c[1]
//
// Both equal the scalar reference's (//kernels/ggml:formats_test checks
// every format).
#pragma once

#include <immintrin.h>

#include "kernels/ggml/formats.h"

#define TC_GGML_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace torchchat::kernels::ggml {

template <class F>
struct Avx2;

// 8 fp16 fields, one per block, `off` bytes into each of 8 blocks.
template <int kBytes>
TC_GGML_AVX2 inline __m256 Gather8(const uint8_t* p, int off) {
  alignas(16) uint16_t h[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&h[i], p + i * kBytes + off, 2);
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
}

// out[2i] = out[2i + 1] = v[i]: a per-32 value for both halves.
TC_GGML_AVX2 inline void Spread(__m256 v, float* out) {
  _mm256_store_ps(out, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
  _mm256_store_ps(out + 8, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)));
}

// 8 unsigned bytes times a scale, as floats.
TC_GGML_AVX2 inline __m256 Bytes8(const uint8_t* p, float scale) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), _mm256_set1_ps(scale));
}

// The eight 32-element blocks of a chunk: d (and m) at fixed offsets, codes
// from the block's own Codes.
template <class F, int kDOff, int kMOff, int kOffsetCode>
struct Avx2Small {
  static constexpr int kChunkBytes = 8 * F::kBytes;
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    const __m256 d = Gather8<F::kBytes>(p, kDOff);
    Spread(d, s);
    if constexpr (kMOff >= 0) {
      Spread(Gather8<F::kBytes>(p, kMOff), m);
    } else if constexpr (kOffsetCode != 0) {
      Spread(_mm256_mul_ps(d, _mm256_set1_ps(-float(kOffsetCode))), m);
    }
  }
};

TC_GGML_AVX2 inline __m256i Nibbles(const uint8_t* q16) {  // 16 bytes -> 32 codes 0..15
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q16));
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m128i lo = _mm_and_si128(raw, m4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
  return _mm256_set_m128i(hi, lo);
}

TC_GGML_AVX2 inline void Widen(__m256i bytes, __m256i* c) {  // unsigned bytes
  c[0] = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes));
  c[1] = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1));
}

TC_GGML_AVX2 inline void WidenSigned(__m256i bytes, __m256i* c) {
  c[0] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(bytes));
  c[1] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(bytes, 1));
}

// Codes as int16 from a format's Bytes (its 32 codes of a group as bytes,
// unsigned, or signed where kSigned).
template <class V>
struct CodesFromBytes {
  TC_GGML_AVX2 static void Codes(const uint8_t* p, int g, __m256i* c) {
    if constexpr (V::kSigned) {
      WidenSigned(V::Bytes(p, g), c);
    } else {
      Widen(V::Bytes(p, g), c);
    }
  }
};

// Byte e is 0x10 where bit e of the 32-bit word is set.
TC_GGML_AVX2 inline __m256i FifthBits(uint32_t h) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(h)), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2,
                                                  2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

TC_GGML_AVX2 inline __m256i Iq4Lookup(__m256i nibbles) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values));
  return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles);
}

// Bits [shift, shift + width) of each byte of 32 bytes (shift < 8).
TC_GGML_AVX2 inline __m256i BitsOf(const uint8_t* p, int shift, int mask) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)),
                          _mm256_set1_epi8(char(mask)));
}

template <>
struct Avx2<Q4_0> : Avx2Small<Q4_0, 0, -1, 8>, CodesFromBytes<Avx2<Q4_0>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    return Nibbles(p + g * Q4_0::kBytes + 2);
  }
};

template <>
struct Avx2<Q4_1> : Avx2Small<Q4_1, 0, 2, 0>, CodesFromBytes<Avx2<Q4_1>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    return Nibbles(p + g * Q4_1::kBytes + 4);
  }
};

template <>
struct Avx2<Q5_0> : Avx2Small<Q5_0, 0, -1, 16>, CodesFromBytes<Avx2<Q5_0>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    const uint8_t* b = p + g * Q5_0::kBytes;
    return _mm256_or_si256(Nibbles(b + 6), FifthBits(Le32(b + 2)));
  }
};

template <>
struct Avx2<Q5_1> : Avx2Small<Q5_1, 0, 2, 0>, CodesFromBytes<Avx2<Q5_1>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    const uint8_t* b = p + g * Q5_1::kBytes;
    return _mm256_or_si256(Nibbles(b + 8), FifthBits(Le32(b + 4)));
  }
};

template <>
struct Avx2<Q8_0> : Avx2Small<Q8_0, 0, -1, 0>, CodesFromBytes<Avx2<Q8_0>> {
  static constexpr bool kSigned = true;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + g * Q8_0::kBytes + 2));
  }
};

template <>
struct Avx2<IQ4_NL> : Avx2Small<IQ4_NL, 0, -1, 0>, CodesFromBytes<Avx2<IQ4_NL>> {
  static constexpr bool kSigned = true;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* p, int g) {
    return Iq4Lookup(Nibbles(p + g * IQ4_NL::kBytes + 2));
  }
};

// Q4_K's and Q5_K's 12 scale bytes as 8 scales then 8 mins (llama.cpp's
// unpacking of get_scale_min_k4, four at a time).
inline void UnpackK4(const uint8_t* q, uint8_t out[16]) {
  uint32_t u[4];
  std::memcpy(u, q, 12);
  constexpr uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
  u[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4);
  const uint32_t mins_lo = u[1] & k6;
  u[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);
  u[2] = mins_lo;
  u[0] &= k6;
  std::memcpy(out, u, 16);
}

template <class F>
struct Avx2K4 {
  static constexpr int kChunkBytes = F::kBytes;
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    alignas(16) uint8_t sm[16];
    UnpackK4(p + 4, sm);
    Spread(Bytes8(sm, Half(p)), s);
    Spread(Bytes8(sm + 8, -Half(p + 2)), m);
  }
};

template <>
struct Avx2<Q4_K> : Avx2K4<Q4_K>, CodesFromBytes<Avx2<Q4_K>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    return BitsOf(b + 16 + 32 * (g / 2), 4 * (g % 2), 0xF);
  }
};

template <>
struct Avx2<Q5_K> : Avx2K4<Q5_K>, CodesFromBytes<Avx2<Q5_K>> {
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    const __m256i lo = BitsOf(b + 48 + 32 * (g / 2), 4 * (g % 2), 0xF);
    const __m256i hi = _mm256_slli_epi16(BitsOf(b + 16, g, 1), 4);
    return _mm256_or_si256(lo, hi);
  }
};

template <>
struct Avx2<Q6_K> : CodesFromBytes<Avx2<Q6_K>> {
  static constexpr int kChunkBytes = Q6_K::kBytes;
  // Group g = 4n + j's halves take scales 8n + 2j and 8n + 2j + 1: in
  // storage order already.
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    const __m256 d = _mm256_set1_ps(Half(p + 208));
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192));
    const __m256 lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d);
    const __m256 hi =
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))), d);
    const __m256 k = _mm256_set1_ps(-32.f);
    _mm256_store_ps(s, lo);
    _mm256_store_ps(s + 8, hi);
    _mm256_store_ps(m, _mm256_mul_ps(lo, k));
    _mm256_store_ps(m + 8, _mm256_mul_ps(hi, k));
  }
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    const int n = g / 4, j = g % 4;
    const __m256i lo = BitsOf(b + 64 * n + 32 * (j % 2), 4 * (j / 2), 0xF);
    const __m256i hi = _mm256_slli_epi16(BitsOf(b + 128 + 32 * n, 2 * j, 3), 4);
    return _mm256_or_si256(lo, hi);
  }
};

template <>
struct Avx2<Q2_K> : CodesFromBytes<Avx2<Q2_K>> {
  static constexpr int kChunkBytes = Q2_K::kBytes;
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0xF));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0xF));
    const __m256 d = _mm256_set1_ps(Half(p + 80)), dmin = _mm256_set1_ps(-Half(p + 82));
    _mm256_store_ps(s, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), d));
    _mm256_store_ps(
        s + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), d));
    _mm256_store_ps(m, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), dmin));
    _mm256_store_ps(
        m + 8,
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), dmin));
  }
  static constexpr bool kSigned = false;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    return BitsOf(b + 16 + 32 * (g / 4), 2 * (g % 4), 3);
  }
};

template <>
struct Avx2<Q3_K> : CodesFromBytes<Avx2<Q3_K>> {
  static constexpr int kChunkBytes = Q3_K::kBytes;
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    // ggml's dequantize_row_q3_K unpacking of the 16 6-bit scales.
    uint32_t u[4];
    std::memcpy(u, p + 96, 12);
    constexpr uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
    const uint32_t t = u[2];
    u[2] = ((u[0] >> 4) & k4) | (((t >> 4) & k2) << 4);
    u[3] = ((u[1] >> 4) & k4) | (((t >> 6) & k2) << 4);
    u[0] = (u[0] & k4) | (((t >> 0) & k2) << 4);
    u[1] = (u[1] & k4) | (((t >> 2) & k2) << 4);
    const __m128i sc =
        _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u)), _mm_set1_epi8(32));
    const __m256 d = _mm256_set1_ps(Half(p + 108));
    _mm256_store_ps(s, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d));
    _mm256_store_ps(
        s + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))), d));
    (void)m;
  }
  static constexpr bool kSigned = true;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    const __m256i q = BitsOf(b + 32 + 32 * (g / 4), 2 * (g % 4), 3);
    const __m256i h = _mm256_slli_epi16(BitsOf(b, g, 1), 2);  // 4 where the bit is set
    return _mm256_sub_epi8(_mm256_add_epi8(q, h), _mm256_set1_epi8(4));
  }
};

// An IQ4_XS chunk's 8 group scales, d * (ls - 32). Group g's 6-bit ls:
// nibble g of scales_l, bits 2g..2g+1 of scales_h on top; each lane
// shifts its own copy.
TC_GGML_AVX2 inline __m256 Iq4XsScales(const uint8_t* p) {
  uint16_t sh;
  std::memcpy(&sh, p + 2, 2);
  const __m256i g = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(int(Le32(p + 4))), _mm256_slli_epi32(g, 2)),
      _mm256_set1_epi32(0xF));
  const __m256i hi = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(sh), _mm256_slli_epi32(g, 1)), _mm256_set1_epi32(3));
  const __m256i ls =
      _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(ls), _mm256_set1_ps(Half(p)));
}

template <>
struct Avx2<IQ4_XS> : CodesFromBytes<Avx2<IQ4_XS>> {
  static constexpr int kChunkBytes = IQ4_XS::kBytes;
  TC_GGML_AVX2 static void ChunkScales(const uint8_t* p, float* s, float* m) {
    Spread(Iq4XsScales(p), s);
    (void)m;
  }
  static constexpr bool kSigned = true;
  TC_GGML_AVX2 static __m256i Bytes(const uint8_t* b, int g) {
    return Iq4Lookup(Nibbles(b + 8 + 16 * g));
  }
};

}  // namespace torchchat::kernels::ggml
