// The GGUF (ggml) block formats, read in place: one trait struct per format.
//
// A weight row is a run of blocks of kElems elements, kBytes bytes each, in
// the file's own layout (ggml-common.h), so a tensor is used straight from
// the mmapped file. Every format is described the same way, per group of 32
// elements g of a block:
//   - Codes(block, g, c): 32 small integer codes, as int16 (the unit the
//     kernels multiply);
//   - Scales(block, s, m): for each 16 elements h of the block, a scale s[h]
//     and an offset m[h], in fp32,
// so that element e = 32g + j is s[e / 16] * c[j] + m[e / 16]. That is
// exactly ggml's own dequantization (gguf's dequantize() in Python gives
// the same floats up to the order of its fp32 products), which is what
// //kernels/ggml:linear_test checks for every format against gguf-py.
//
// The scalar functions here are the reference; the AVX2 Codes in
// formats_avx2.h produce the same integers.
#pragma once

#include <cstdint>
#include <cstring>

namespace torchchat::kernels::ggml {

// ggml's type ids (ggml.h's enum ggml_type), as GGUF stores them.
enum Type : int {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
};

// fp16 at p (GGUF is little-endian, as are our targets) to float, without
// branches: exact for every input, subnormals and inf/nan included (the
// FP16 library's construction).
inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  uint32_t bits = (two_w >> 4) + (0xE0u << 23);
  float normalized;
  std::memcpy(&normalized, &bits, 4);
  normalized *= 0x1.0p-112f;
  bits = (two_w >> 17) | (126u << 23);
  float denormalized;
  std::memcpy(&denormalized, &bits, 4);
  denormalized -= 0.5f;
  const float v = two_w < (1u << 27) ? denormalized : normalized;
  std::memcpy(&bits, &v, 4);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline uint32_t Le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                          1,    13,   25,  38,  53,  69,  89,  113};

// ------------------------------------------------------- 32-element blocks --

struct Q4_0 {  // fp16 d, 16 bytes of nibbles; w = d * (q - 8)
  static constexpr Type kType = kQ4_0;
  static constexpr int kElems = 32, kBytes = 18;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = -8.f * s[0];
  }
  static void Codes(const uint8_t* b, int, int16_t* c) {
    for (int j = 0; j < 16; ++j) {
      c[j] = int16_t(b[2 + j] & 0xF);
      c[j + 16] = int16_t(b[2 + j] >> 4);
    }
  }
};

struct Q4_1 {  // fp16 d, fp16 m, 16 bytes of nibbles; w = d * q + m
  static constexpr Type kType = kQ4_1;
  static constexpr int kElems = 32, kBytes = 20;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = Half(b + 2);
  }
  static void Codes(const uint8_t* b, int, int16_t* c) {
    for (int j = 0; j < 16; ++j) {
      c[j] = int16_t(b[4 + j] & 0xF);
      c[j + 16] = int16_t(b[4 + j] >> 4);
    }
  }
};

// Element e's fifth bit is bit e of the 32-bit qh.
inline void Codes5(const uint8_t* qh, const uint8_t* qs, int16_t* c) {
  const uint32_t h = Le32(qh);
  for (int j = 0; j < 16; ++j) {
    c[j] = int16_t((qs[j] & 0xF) | (((h >> j) & 1) << 4));
    c[j + 16] = int16_t((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4));
  }
}

struct Q5_0 {  // fp16 d, 4 bytes qh, 16 bytes qs; w = d * (q - 16)
  static constexpr Type kType = kQ5_0;
  static constexpr int kElems = 32, kBytes = 22;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = -16.f * s[0];
  }
  static void Codes(const uint8_t* b, int, int16_t* c) { Codes5(b + 2, b + 6, c); }
};

struct Q5_1 {  // fp16 d, fp16 m, 4 bytes qh, 16 bytes qs; w = d * q + m
  static constexpr Type kType = kQ5_1;
  static constexpr int kElems = 32, kBytes = 24;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = Half(b + 2);
  }
  static void Codes(const uint8_t* b, int, int16_t* c) { Codes5(b + 4, b + 8, c); }
};

struct Q8_0 {  // fp16 d, 32 int8; w = d * q
  static constexpr Type kType = kQ8_0;
  static constexpr int kElems = 32, kBytes = 34;
  static constexpr bool kScale16 = false, kMin = false;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = 0.f;
  }
  static void Codes(const uint8_t* b, int, int16_t* c) {
    for (int j = 0; j < 32; ++j) c[j] = int16_t(int8_t(b[2 + j]));
  }
};

struct IQ4_NL {  // fp16 d, 16 bytes of nibbles; w = d * kIq4Values[q]
  static constexpr Type kType = kIQ4_NL;
  static constexpr int kElems = 32, kBytes = 18;
  static constexpr bool kScale16 = false, kMin = false;
  static void Scales(const uint8_t* b, float* s, float* m) {
    s[0] = s[1] = Half(b);
    m[0] = m[1] = 0.f;
  }
  static void Codes(const uint8_t* b, int, int16_t* c) {
    for (int j = 0; j < 16; ++j) {
      c[j] = kIq4Values[b[2 + j] & 0xF];
      c[j + 16] = kIq4Values[b[2 + j] >> 4];
    }
  }
};

// ------------------------------------------- 256-element blocks (K-quants) --

// Q4_K's and Q5_K's eight 6-bit scales and mins (ggml's get_scale_min_k4).
inline void ScaleMinK4(const uint8_t* q, int j, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *mn = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

inline void ScalesK4(float d, float dmin, const uint8_t* q, float* s, float* m) {
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, mn;
    ScaleMinK4(q, j, &sc, &mn);
    s[2 * j] = s[2 * j + 1] = d * float(sc);
    m[2 * j] = m[2 * j + 1] = -dmin * float(mn);
  }
}

struct Q4_K {  // fp16 d, fp16 dmin, 12 bytes of scales, 128 bytes of nibbles
  static constexpr Type kType = kQ4_K;
  static constexpr int kElems = 256, kBytes = 144;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    ScalesK4(Half(b), Half(b + 2), b + 4, s, m);
  }
  // Group g: bytes 32*(g/2).., low nibbles for even g, high for odd.
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const uint8_t* q = b + 16 + 32 * (g / 2);
    const int shift = 4 * (g % 2);
    for (int j = 0; j < 32; ++j) c[j] = int16_t((q[j] >> shift) & 0xF);
  }
};

struct Q5_K {  // fp16 d, fp16 dmin, 12 bytes of scales, 32 bytes qh, 128 bytes qs
  static constexpr Type kType = kQ5_K;
  static constexpr int kElems = 256, kBytes = 176;
  static constexpr bool kScale16 = false, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    ScalesK4(Half(b), Half(b + 2), b + 4, s, m);
  }
  // As Q4_K, plus bit g of qh[j] as the fifth bit.
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48 + 32 * (g / 2);
    const int shift = 4 * (g % 2);
    for (int j = 0; j < 32; ++j)
      c[j] = int16_t(((q[j] >> shift) & 0xF) | (((qh[j] >> g) & 1) << 4));
  }
};

struct Q6_K {  // 128 bytes ql, 64 bytes qh, 16 int8 scales, fp16 d; w = d * sc * (q - 32)
  static constexpr Type kType = kQ6_K;
  static constexpr int kElems = 256, kBytes = 210;
  static constexpr bool kScale16 = true, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    const float d = Half(b + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    // Group g = 4n + j covers scales 8n + 2j and 8n + 2j + 1.
    for (int g = 0; g < 8; ++g)
      for (int h = 0; h < 2; ++h) {
        s[2 * g + h] = d * float(sc[8 * (g / 4) + 2 * (g % 4) + h]);
        m[2 * g + h] = -32.f * s[2 * g + h];
      }
  }
  // Group g = 4n + j: low nibbles (j < 2) or high ones of ql[64n + 32(j%2)..],
  // with bits 2j, 2j+1 of qh[32n..] on top.
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const int n = g / 4, j = g % 4;
    const uint8_t* ql = b + 64 * n + 32 * (j % 2);
    const uint8_t* qh = b + 128 + 32 * n;
    const int shift = 4 * (j / 2);
    for (int l = 0; l < 32; ++l)
      c[l] = int16_t(((ql[l] >> shift) & 0xF) | (((qh[l] >> (2 * j)) & 3) << 4));
  }
};

struct Q2_K {  // 16 bytes of 4-bit scale/min pairs, 64 bytes qs, fp16 d, fp16 dmin
  static constexpr Type kType = kQ2_K;
  static constexpr int kElems = 256, kBytes = 84;
  static constexpr bool kScale16 = true, kMin = true;
  static void Scales(const uint8_t* b, float* s, float* m) {
    const float d = Half(b + 80), dmin = Half(b + 82);
    for (int i = 0; i < 16; ++i) {
      s[i] = d * float(b[i] & 0xF);
      m[i] = -dmin * float(b[i] >> 4);
    }
  }
  // Group g = 4n + j: bits 2j of qs[32n..].
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const uint8_t* q = b + 16 + 32 * (g / 4);
    const int shift = 2 * (g % 4);
    for (int l = 0; l < 32; ++l) c[l] = int16_t((q[l] >> shift) & 3);
  }
};

struct Q3_K {  // 32 bytes hmask, 64 bytes qs, 12 bytes of 6-bit scales, fp16 d
  static constexpr Type kType = kQ3_K;
  static constexpr int kElems = 256, kBytes = 110;
  static constexpr bool kScale16 = true, kMin = false;
  static void Scales(const uint8_t* b, float* s, float* m) {
    const float d = Half(b + 108);
    const uint8_t* a = b + 96;
    for (int i = 0; i < 16; ++i) {
      // ggml's dequantize_row_q3_K unpacking: low 4 bits from a[i % 8]'s
      // nibble i / 8, high 2 bits from a[8 + i % 4], bits 2 * (i / 4).
      const int lo = (a[i % 8] >> (4 * (i / 8))) & 0xF;
      const int hi = (a[8 + i % 4] >> (2 * (i / 4))) & 3;
      s[i] = d * float((lo | (hi << 4)) - 32);
      m[i] = 0.f;
    }
  }
  // Group g = 4n + j: bits 2j of qs[32n..], minus 4 where bit 4n + j of
  // hmask[l] is clear.
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const uint8_t* hm = b;
    const uint8_t* q = b + 32 + 32 * (g / 4);
    const int shift = 2 * (g % 4);
    for (int l = 0; l < 32; ++l)
      c[l] = int16_t(((q[l] >> shift) & 3) - (((hm[l] >> g) & 1) ? 0 : 4));
  }
};

struct IQ4_XS {  // fp16 d, 16-bit scales_h, 4 bytes scales_l, 128 bytes of nibbles
  static constexpr Type kType = kIQ4_XS;
  static constexpr int kElems = 256, kBytes = 136;
  static constexpr bool kScale16 = false, kMin = false;
  static void Scales(const uint8_t* b, float* s, float* m) {
    const float d = Half(b);
    uint16_t sh;
    std::memcpy(&sh, b + 2, 2);
    for (int g = 0; g < 8; ++g) {
      const int ls = ((b[4 + g / 2] >> (4 * (g % 2))) & 0xF) | (((sh >> (2 * g)) & 3) << 4);
      s[2 * g] = s[2 * g + 1] = d * float(ls - 32);
      m[2 * g] = m[2 * g + 1] = 0.f;
    }
  }
  static void Codes(const uint8_t* b, int g, int16_t* c) {
    const uint8_t* q = b + 8 + 16 * g;
    for (int j = 0; j < 16; ++j) {
      c[j] = kIq4Values[q[j] & 0xF];
      c[j + 16] = kIq4Values[q[j] >> 4];
    }
  }
};

}  // namespace torchchat::kernels::ggml
