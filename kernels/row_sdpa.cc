// torchchat::row_sdpa: attention over a KV cache whose every query row gets
// the bits it would get alone, so that a row's result does not depend on
// how many rows are in the call (nor on the threads).
//
//   row_sdpa(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? slots,
//            float scale, float softcap, int max_rows) -> Tensor
//
// q: float32 [1, H, T, D]; k, v: float32 [S, KVH, L, D] (the cache, H a
// multiple of KVH: grouped-query heads); mask: bool [T, L], true where row t
// may attend to cache position j (causal, windowed, images: the model's own
// mask rows); slots: int64 [T], the cache row of each query row (none: row
// 0). softcap 0 means none. Returns float32 [1, H, T, D].
//
// Why: torch's SDPA sums a batch of query rows in another order than one
// row, and the GGUF kernels' int8 activations round that 1-ulp difference
// into other logits, so a speculative draft verified in one forward would
// not keep plain decoding's ids (torchchat/README.md).
//
// Each (row, head)'s arithmetic is fixed by that row alone (its query and
// its own allowed keys j_0 < j_1 < ...):
//   score_i = dot(q, k[j_i]) summed in 16 lanes (lane l: d = l, l+16, ...,
//             each an FMA in d order), the lanes by the tree
//             l[i] += l[i + w], w = 8, 4, 2, 1 (Tree16); times scale; capped
//   p_i     = Exp(score_i - max) (Cephes' expf, FMA), summed in 16 lanes by
//             i mod 16, then Tree16
//   out     = sum over i ascending of FMA(p_i, v[j_i], .), times 1 / sum.
// A call only decides which rows share the loads: the rows of one span (a
// slot's rows) and the query heads of one kv head form a job, whose cache
// rows are read once per block and applied to all of its rows in
// registers (each row's sums still in its own order; a row skips the cache
// positions only others allow, which adds nothing). The AVX-512, AVX2 and
// scalar paths do the same operations in the same order, so they give the
// same bits (row_sdpa_test forces each path through kernels/isa.h).
//
// Runs of rows of one slot longer than max_rows (a prefill chunk) go to
// torch's SDPA over that slot's filled cache instead, which is faster there
// and what eager computed before; their logits are never a speculative
// check's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/isa.h"

namespace torchchat::kernels {
namespace {

// One query row of a job.
struct Row {
  const float* q;     // [D]
  float* out;         // [D]
  const int32_t* at;  // its allowed keys as indices into Job::pos, ascending
  int64_t n;          // how many
};

// The rows of one span that share a kv head, and the union of their keys.
struct Job {
  const float* k;      // cache position j's key at k + j * kstride
  const float* v;      // likewise, vstride
  const int32_t* pos;  // the rows' allowed positions together, ascending
  int64_t nu;          // how many
  const Row* rows;
  int64_t nr;
};

struct Shape {
  int64_t d, kstride, vstride;
  float scale, softcap;
};

// One job's scratch: scores then weights, row r's at s + r * ld, dense over
// the job's positions (0 where the row does not attend); c a row's own.
struct Scratch {
  float* s;
  int64_t ld;
  float* c;
  float* inv;
};

float Capped(float s, float cap) { return cap > 0.f ? std::tanh(s / cap) * cap : s; }

// The fixed tree of 16 lanes' sum.
float Tree16(float* l) {
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) l[i] += l[i + w];
  return l[0];
}

// Row r's scores in its own key order, scaled and capped, into c; their max.
float OwnScores(const float* s, const Row& row, const Shape& sh, float* c) {
  float m = -INFINITY;
  for (int64_t i = 0; i < row.n; ++i) {
    c[i] = Capped(s[row.at[i]] * sh.scale, sh.softcap);
    m = std::max(m, c[i]);
  }
  return m;
}

// The weights c[0, n) back into the dense row s[0, nu).
void Scatter(const float* c, const Row& row, int64_t nu, float* s) {
  std::fill(s, s + nu, 0.f);
  for (int64_t i = 0; i < row.n; ++i) s[row.at[i]] = c[i];
}

// ---- Scalar: the reference order, written out (fmaf is one rounding, as
// the vector FMAs).

// exp(x) for x <= 0: the vector paths' Cephes expf, lane by lane.
float ExpScalar(float x) {
  x = x > -87.f ? x : -87.f;  // _mm*_max_ps(x, -87): -87 for NaN too
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float g = std::fma(-n, 0.693359375f, x);
  g = std::fma(-n, -2.12194440e-4f, g);
  float p = 1.9875691500e-4f;
  p = std::fma(p, g, 1.3981999507e-3f);
  p = std::fma(p, g, 8.3334519073e-3f);
  p = std::fma(p, g, 4.1665795894e-2f);
  p = std::fma(p, g, 1.6666665459e-1f);
  p = std::fma(p, g, 5.0000001201e-1f);
  p = std::fma(p, g * g, g + 1.f);
  const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
  float e;
  std::memcpy(&e, &bits, sizeof e);
  return p * e;
}

void JobScalar(const Job& j, const Shape& sh, const Scratch& x) {
  for (int64_t r = 0; r < j.nr; ++r) {
    const Row& row = j.rows[r];
    float* s = x.s + r * x.ld;
    for (int64_t i = 0; i < row.n; ++i) {
      const float* kr = j.k + j.pos[row.at[i]] * sh.kstride;
      float l[16] = {};
      for (int64_t d = 0; d < sh.d; ++d) l[d % 16] = std::fma(row.q[d], kr[d], l[d % 16]);
      s[row.at[i]] = Tree16(l);
    }
    const float m = OwnScores(s, row, sh, x.c);
    float l[16] = {};
    for (int64_t i = 0; i < row.n; ++i) {
      x.c[i] = ExpScalar(x.c[i] - m);
      l[i % 16] += x.c[i];
    }
    const float inv = 1.f / Tree16(l);
    std::fill(row.out, row.out + sh.d, 0.f);
    for (int64_t i = 0; i < row.n; ++i) {
      const float* vr = j.v + j.pos[row.at[i]] * sh.vstride;
      for (int64_t d = 0; d < sh.d; ++d) row.out[d] = std::fma(x.c[i], vr[d], row.out[d]);
    }
    for (int64_t d = 0; d < sh.d; ++d) row.out[d] *= inv;
  }
}

#if TC_Q4_X86

// ---- AVX-512: 16 lanes.
#define AVX512 TC_TARGET("avx512f,fma")

// The masked-zero forms of the intrinsics below: GCC 12's plain forms take
// an _mm512_undefined_*() that trips -Wuninitialized in its own header.
constexpr __mmask16 kAll = 0xffff;

AVX512 __mmask16 Tail(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

// exp(x) for x <= 0 (scores minus their max): Cephes' expf. Below -87 it
// stays exp(-87) (1.6e-38, never 0), nothing beside the max's 1.
AVX512 __m512 Exp512(__m512 x) {
  x = _mm512_maskz_max_ps(kAll, x, _mm512_set1_ps(-87.f));
  const __m512 n =
      _mm512_maskz_roundscale_ps(kAll, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 g = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  g = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), g);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(g, g), _mm512_add_ps(g, _mm512_set1_ps(1.f)));
  const __m512i e = _mm512_maskz_slli_epi32(
      kAll, _mm512_add_epi32(_mm512_maskz_cvtps_epi32(kAll, n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// Four vectors' Tree16 sums at once, in lanes 0, 4, 8 and 12: each stage
// pairs lanes i and i + w of one vector only.
AVX512 __m512 Reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 x = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, a, b, 0x44),
                                 _mm512_maskz_shuffle_f32x4(kAll, a, b, 0xEE));  // w 8
  const __m512 y = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, c, d, 0x44),
                                 _mm512_maskz_shuffle_f32x4(kAll, c, d, 0xEE));
  const __m512 z = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, x, y, 0x88),
                                 _mm512_maskz_shuffle_f32x4(kAll, x, y, 0xDD));  // w 4
  const __m512 u = _mm512_add_ps(z, _mm512_maskz_permute_ps(kAll, z, 0x4E));     // w 2
  return _mm512_add_ps(u, _mm512_maskz_permute_ps(kAll, u, 0xB1));               // w 1
}

// RB rows' scores against four cache rows kr (nk of them real), into
// s[r * ld + u0 + b]: the keys loaded once for all the rows.
template <int RB>
AVX512 void Dots512(const Row* rows, const float* const* kr, int64_t dim, float* s, int64_t ld,
                    int64_t u0, int64_t nk) {
  __m512 acc[RB][4];
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    TC_UNROLL
    for (int b = 0; b < 4; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < dim; d += 16) {
    const __mmask16 m = Tail(dim - d);
    __m512 kk[4];
    TC_UNROLL
    for (int b = 0; b < 4; ++b) kk[b] = _mm512_maskz_loadu_ps(m, kr[b] + d);
    TC_UNROLL
    for (int r = 0; r < RB; ++r) {
      const __m512 q = _mm512_maskz_loadu_ps(m, rows[r].q + d);
      TC_UNROLL
      for (int b = 0; b < 4; ++b) acc[r][b] = _mm512_fmadd_ps(q, kk[b], acc[r][b]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    alignas(64) float l[16];
    _mm512_store_ps(l, Reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    for (int64_t b = 0; b < nk; ++b) s[r * ld + u0 + b] = l[4 * b];
  }
}

// RB rows' outputs [d0, d0 + 64) plus the weighted values of positions
// [u0, u1): each value row loaded once for all the rows that attend to it.
template <int RB>
AVX512 void Values512(const Job& j, const Row* rows, const float* p, int64_t ld, int64_t u0,
                      int64_t u1, int64_t d0, const Shape& sh) {
  __mmask16 m[4];
  for (int c = 0; c < 4; ++c) m[c] = Tail(sh.d - d0 - 16 * c);
  __m512 acc[RB][4];
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    TC_UNROLL
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_maskz_loadu_ps(m[c], rows[r].out + d0 + 16 * c);
  }
  for (int64_t u = u0; u < u1; ++u) {
    const float* vr = j.v + j.pos[u] * sh.vstride + d0;
    __m512 vv[4];
    TC_UNROLL
    for (int c = 0; c < 4; ++c) vv[c] = _mm512_maskz_loadu_ps(m[c], vr + 16 * c);
    TC_UNROLL
    for (int r = 0; r < RB; ++r) {
      const float w = p[r * ld + u];
      if (w == 0.f) continue;  // not this row's key (its own are never 0)
      const __m512 wv = _mm512_set1_ps(w);
      TC_UNROLL
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(wv, vv[c], acc[r][c]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    TC_UNROLL
    for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(rows[r].out + d0 + 16 * c, m[c], acc[r][c]);
  }
}

// c[0, n) -> Exp512(c - m), in place; their sum by i mod 16, then Tree16.
AVX512 float ExpSum512(float* c, int64_t n, float m) {
  const __m512 mv = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    const __m512 p =
        _mm512_maskz_mov_ps(k, Exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, c + i), mv)));
    _mm512_mask_storeu_ps(c + i, k, p);
    sum = _mm512_add_ps(sum, p);
  }
  alignas(64) float l[16];
  _mm512_store_ps(l, sum);
  return Tree16(l);
}

constexpr int kRows512 = 6;  // 6 rows x 4 vectors of accumulators: 24 of 32 registers

AVX512 void JobAvx512(const Job& j, const Shape& sh, const Scratch& x) {
  using DotsFn =
      void (*)(const Row*, const float* const*, int64_t, float*, int64_t, int64_t, int64_t);
  using ValuesFn = void (*)(const Job&, const Row*, const float*, int64_t, int64_t, int64_t,
                            int64_t, const Shape&);
  static constexpr DotsFn kDots[] = {nullptr,    Dots512<1>, Dots512<2>, Dots512<3>,
                                     Dots512<4>, Dots512<5>, Dots512<6>};
  static constexpr ValuesFn kValues[] = {nullptr,      Values512<1>, Values512<2>, Values512<3>,
                                         Values512<4>, Values512<5>, Values512<6>};
  // Keys four at a time (a block stays in L1 across the row blocks).
  for (int64_t u0 = 0; u0 < j.nu; u0 += 4) {
    const int64_t nk = std::min<int64_t>(4, j.nu - u0);
    const float* kr[4];
    for (int64_t b = 0; b < 4; ++b) kr[b] = j.k + j.pos[u0 + std::min(b, nk - 1)] * sh.kstride;
    for (int64_t r0 = 0; r0 < j.nr; r0 += kRows512)
      kDots[std::min<int64_t>(kRows512, j.nr - r0)](j.rows + r0, kr, sh.d, x.s + r0 * x.ld, x.ld,
                                                    u0, nk);
  }
  for (int64_t r = 0; r < j.nr; ++r) {
    const Row& row = j.rows[r];
    float* s = x.s + r * x.ld;
    x.inv[r] = 1.f / ExpSum512(x.c, row.n, OwnScores(s, row, sh, x.c));
    Scatter(x.c, row, j.nu, s);
    std::fill(row.out, row.out + sh.d, 0.f);
  }
  // Values 64 positions (16 KB at D = 64) at a time, so they stay in L1.
  for (int64_t d0 = 0; d0 < sh.d; d0 += 64)
    for (int64_t u0 = 0; u0 < j.nu; u0 += 64)
      for (int64_t r0 = 0; r0 < j.nr; r0 += kRows512)
        kValues[std::min<int64_t>(kRows512, j.nr - r0)](j, j.rows + r0, x.s + r0 * x.ld, x.ld, u0,
                                                        std::min<int64_t>(j.nu, u0 + 64), d0, sh);
  for (int64_t r = 0; r < j.nr; ++r)
    for (int64_t d = 0; d < sh.d; ++d) j.rows[r].out[d] *= x.inv[r];
}

// ---- AVX2: the same 16 lanes as two halves of 8.
#define AVX2 TC_TARGET("avx2,fma,f16c")

AVX2 __m256i Mask8(int64_t left) {
  const int32_t n = int32_t(std::clamp<int64_t>(left, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2 __m256 Exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 g = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  g = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), g);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(g, g), _mm256_add_ps(g, _mm256_set1_ps(1.f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// As Dots512, lanes 0-7 of each 16 in a first pass and 8-15 in a second
// (8 + 4 of 16 registers), then w = 8 as lo + hi and HsumAvx2's w = 4, 2, 1.
template <int RB>
AVX2 void Dots256(const Row* rows, const float* const* kr, int64_t dim, float* s, int64_t ld,
                  int64_t u0, int64_t nk) {
  __m256 half[2][RB][4];
  for (int h = 0; h < 2; ++h) {
    __m256 acc[RB][4];
    TC_UNROLL
    for (int r = 0; r < RB; ++r) {
      TC_UNROLL
      for (int b = 0; b < 4; ++b) acc[r][b] = _mm256_setzero_ps();
    }
    for (int64_t d = 8 * h; d < dim; d += 16) {
      const __m256i m = Mask8(dim - d);
      __m256 kk[4];
      TC_UNROLL
      for (int b = 0; b < 4; ++b) kk[b] = _mm256_maskload_ps(kr[b] + d, m);
      TC_UNROLL
      for (int r = 0; r < RB; ++r) {
        const __m256 q = _mm256_maskload_ps(rows[r].q + d, m);
        TC_UNROLL
        for (int b = 0; b < 4; ++b) acc[r][b] = _mm256_fmadd_ps(q, kk[b], acc[r][b]);
      }
    }
    TC_UNROLL
    for (int r = 0; r < RB; ++r) {
      TC_UNROLL
      for (int b = 0; b < 4; ++b) half[h][r][b] = acc[r][b];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int64_t b = 0; b < nk; ++b)
      s[r * ld + u0 + b] = isa::HsumAvx2(_mm256_add_ps(half[0][r][b], half[1][r][b]));
}

template <int RB>
AVX2 void Values256(const Job& j, const Row* rows, const float* p, int64_t ld, int64_t u0,
                    int64_t u1, int64_t d0, const Shape& sh) {
  const __m256i m[2] = {Mask8(sh.d - d0), Mask8(sh.d - d0 - 8)};
  __m256 acc[RB][2];
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    TC_UNROLL
    for (int c = 0; c < 2; ++c) acc[r][c] = _mm256_maskload_ps(rows[r].out + d0 + 8 * c, m[c]);
  }
  for (int64_t u = u0; u < u1; ++u) {
    const float* vr = j.v + j.pos[u] * sh.vstride + d0;
    const __m256 vv[2] = {_mm256_maskload_ps(vr, m[0]), _mm256_maskload_ps(vr + 8, m[1])};
    TC_UNROLL
    for (int r = 0; r < RB; ++r) {
      const float w = p[r * ld + u];
      if (w == 0.f) continue;
      const __m256 wv = _mm256_set1_ps(w);
      TC_UNROLL
      for (int c = 0; c < 2; ++c) acc[r][c] = _mm256_fmadd_ps(wv, vv[c], acc[r][c]);
    }
  }
  TC_UNROLL
  for (int r = 0; r < RB; ++r) {
    TC_UNROLL
    for (int c = 0; c < 2; ++c) _mm256_maskstore_ps(rows[r].out + d0 + 8 * c, m[c], acc[r][c]);
  }
}

AVX2 float ExpSum256(float* c, int64_t n, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t i = 0; i < n; i += 16) {
    for (int h = 0; h < 2; ++h) {
      const __m256i k = Mask8(n - i - 8 * h);
      const __m256 x = _mm256_sub_ps(_mm256_maskload_ps(c + i + 8 * h, k), mv);
      const __m256 p = _mm256_and_ps(Exp256(x), _mm256_castsi256_ps(k));
      _mm256_maskstore_ps(c + i + 8 * h, k, p);
      sum[h] = _mm256_add_ps(sum[h], p);
    }
  }
  alignas(32) float l[16];
  _mm256_store_ps(l, sum[0]);
  _mm256_store_ps(l + 8, sum[1]);
  return Tree16(l);
}

constexpr int kDotRows256 = 2;    // 2 rows x 4 keys: 8 accumulators of 16 registers
constexpr int kValueRows256 = 5;  // 5 rows x 2 vectors: 10

AVX2 void JobAvx2(const Job& j, const Shape& sh, const Scratch& x) {
  using DotsFn =
      void (*)(const Row*, const float* const*, int64_t, float*, int64_t, int64_t, int64_t);
  using ValuesFn = void (*)(const Job&, const Row*, const float*, int64_t, int64_t, int64_t,
                            int64_t, const Shape&);
  static constexpr DotsFn kDots[] = {nullptr, Dots256<1>, Dots256<2>};
  static constexpr ValuesFn kValues[] = {nullptr,      Values256<1>, Values256<2>,
                                         Values256<3>, Values256<4>, Values256<5>};
  for (int64_t u0 = 0; u0 < j.nu; u0 += 4) {
    const int64_t nk = std::min<int64_t>(4, j.nu - u0);
    const float* kr[4];
    for (int64_t b = 0; b < 4; ++b) kr[b] = j.k + j.pos[u0 + std::min(b, nk - 1)] * sh.kstride;
    for (int64_t r0 = 0; r0 < j.nr; r0 += kDotRows256)
      kDots[std::min<int64_t>(kDotRows256, j.nr - r0)](j.rows + r0, kr, sh.d, x.s + r0 * x.ld, x.ld,
                                                       u0, nk);
  }
  for (int64_t r = 0; r < j.nr; ++r) {
    const Row& row = j.rows[r];
    float* s = x.s + r * x.ld;
    x.inv[r] = 1.f / ExpSum256(x.c, row.n, OwnScores(s, row, sh, x.c));
    Scatter(x.c, row, j.nu, s);
    std::fill(row.out, row.out + sh.d, 0.f);
  }
  for (int64_t d0 = 0; d0 < sh.d; d0 += 16)
    for (int64_t u0 = 0; u0 < j.nu; u0 += 64)
      for (int64_t r0 = 0; r0 < j.nr; r0 += kValueRows256)
        kValues[std::min<int64_t>(kValueRows256, j.nr - r0)](
            j, j.rows + r0, x.s + r0 * x.ld, x.ld, u0, std::min<int64_t>(j.nu, u0 + 64), d0, sh);
  for (int64_t r = 0; r < j.nr; ++r)
    for (int64_t d = 0; d < sh.d; ++d) j.rows[r].out[d] *= x.inv[r];
}

// The positions a mask row allows, 64 bytes at a time.
TC_TARGET("avx512f,avx512bw") void AllowedBw(const bool* m, int64_t n, std::vector<int32_t>& out) {
  for (int64_t j = 0; j < n; j += 64) {
    const __mmask64 tail = n - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - j)) - 1;
    const __m512i x = _mm512_maskz_loadu_epi8(tail, m + j);
    for (uint64_t bits = _mm512_test_epi8_mask(x, x); bits; bits &= bits - 1)
      out.push_back(int32_t(j + __builtin_ctzll(bits)));
  }
}
#endif  // TC_Q4_X86

void Allowed(const bool* m, int64_t n, std::vector<int32_t>& out) {
#if TC_Q4_X86
  static const bool bw = __builtin_cpu_supports("avx512bw");
  if (bw) return AllowedBw(m, n, out);
#endif
  for (int64_t j = 0; j < n; ++j)
    if (m[j]) out.push_back(int32_t(j));
}

using JobFn = void (*)(const Job&, const Shape&, const Scratch&);

// The path kernels/isa.h picked (or a test forced): every path gives the
// same bits, so this only decides the speed.
JobFn ActiveJob() {
#if TC_Q4_X86
  switch (isa::Active()) {
    case isa::Path::kAvx512:
    case isa::Path::kAvx512Vnni:
      return JobAvx512;
    case isa::Path::kAvx2:
      return JobAvx2;
    default:
      break;
  }
#endif
  return JobScalar;
}

// Torch's SDPA (with the score cap written out, as torchchat.attention.attend
// does) over rows [a, a + n) of one slot and that slot's cache up to `end`.
at::Tensor Bulk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& mask, int64_t slot, int64_t a, int64_t n, int64_t end,
                double scale, double softcap) {
  const at::Tensor qs = q.narrow(2, a, n);
  const at::Tensor ks = k.narrow(0, slot, 1).narrow(2, 0, end);
  const at::Tensor vs = v.narrow(0, slot, 1).narrow(2, 0, end);
  const at::Tensor ms = mask.narrow(0, a, n).narrow(1, 0, end);
  if (softcap <= 0)
    return at::scaled_dot_product_attention(qs, ks, vs, ms, 0.0, false, scale, true);
  const int64_t kv = k.size(1);
  const at::Tensor qg = qs.unflatten(1, {kv, q.size(1) / kv});
  at::Tensor sc = at::matmul(qg, ks.unsqueeze(2).transpose(-1, -2)) * scale;
  sc = at::tanh(sc / softcap) * softcap;
  sc = at::where(ms, sc, at::full_like(sc, -INFINITY));
  const at::Tensor p = at::softmax(sc, -1);
  return at::matmul(p, vs.unsqueeze(2)).flatten(1, 2);
}

at::Tensor RowSdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& mask, const c10::optional<at::Tensor>& slots_opt, double scale,
                   double softcap, int64_t max_rows) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "row_sdpa: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "row_sdpa: q, k and v must be float32");
  TORCH_CHECK(q.dim() == 4 && q.size(0) == 1, "row_sdpa: q must be [1, H, T, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.size(3) == q.size(3),
              "row_sdpa: k and v must be [S, KVH, L, D] with q's D, got ", k.sizes(), " and ",
              v.sizes());
  const int64_t heads = q.size(1), rows = q.size(2), dim = q.size(3);
  const int64_t kv = k.size(1), length = k.size(2);
  TORCH_CHECK(max_rows >= 0, "row_sdpa: max_rows must not be negative, got ", max_rows);
  TORCH_CHECK(kv > 0 && heads % kv == 0, "row_sdpa: ", heads, " query heads over ", kv,
              " kv heads");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == rows &&
                  mask.size(1) == length,
              "row_sdpa: mask must be bool [", rows, ", ", length, "], got ", mask.scalar_type(),
              " ", mask.sizes());
  at::Tensor slots = slots_opt.has_value() && slots_opt->defined()
                         ? slots_opt->to(at::kLong).contiguous()
                         : at::zeros({rows}, at::kLong);
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == rows, "row_sdpa: slots must be [", rows, "]");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < rows; ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < k.size(0), "row_sdpa: slot ", slot[t],
                " out of range [0, ", k.size(0), ")");

  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  const at::Tensor mc = mask.contiguous();
  at::Tensor out = at::empty({1, heads, rows, dim}, q.options());

  // Each row's allowed positions, in order.
  std::vector<std::vector<int32_t>> keys(rows);
  const bool* mp = mc.data_ptr<bool>();
  for (int64_t t = 0; t < rows; ++t) Allowed(mp + t * length, length, keys[t]);

  std::vector<std::pair<int64_t, int64_t>> alone;  // spans of rows each computed as alone
  for (int64_t a = 0; a < rows;) {
    int64_t b = a + 1;
    while (b < rows && slot[b] == slot[a]) ++b;
    if (b - a <= max_rows) {
      alone.emplace_back(a, b);
    } else {
      int64_t end = 1;
      for (int64_t t = a; t < b; ++t)
        if (!keys[t].empty()) end = std::max<int64_t>(end, keys[t].back() + 1);
      out.narrow(2, a, b - a).copy_(Bulk(qc, kc, vc, mc, slot[a], a, b - a, end, scale, softcap));
    }
    a = b;
  }

  const Shape shape{dim, kc.stride(2), vc.stride(2), float(scale), float(softcap)};
  const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = heads / kv;

  // Each span's allowed positions together (its rows', ascending), and each
  // row's keys as indices into them.
  std::vector<std::vector<int32_t>> pos(alone.size()), at(rows);
  std::vector<int32_t> index(length, -1);
  for (size_t sp = 0; sp < alone.size(); ++sp) {
    const auto [a, b] = alone[sp];
    int32_t lo = int32_t(length), hi = -1;
    for (int64_t t = a; t < b; ++t) {
      if (keys[t].empty()) continue;
      lo = std::min(lo, keys[t].front());
      hi = std::max(hi, keys[t].back());
      for (const int32_t j : keys[t]) index[j] = 0;
    }
    for (int32_t j = lo; j <= hi; ++j) {
      if (index[j] < 0) continue;
      index[j] = int32_t(pos[sp].size());
      pos[sp].push_back(j);
    }
    for (int64_t t = a; t < b; ++t)
      for (const int32_t j : keys[t]) at[t].push_back(index[j]);
    for (int32_t j = lo; j <= hi; ++j) index[j] = -1;
  }

  // A span's rows of one kv head (all its query heads) share the loads of
  // its cache rows; a job is up to 12 of them (two register blocks), fewer
  // where that leaves a thread idle (one decode row: 3 kv heads, 2 threads).
  std::vector<Row> all;
  all.reserve(alone.size() * heads * max_rows);
  struct Part {
    size_t sp;
    int64_t g, begin, end;
  };
  std::vector<Part> parts;
  for (size_t sp = 0; sp < alone.size(); ++sp) {
    const auto [a, b] = alone[sp];
    for (int64_t g = 0; g < kv; ++g) {
      const int64_t begin = int64_t(all.size());
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t t = a; t < b; ++t) {
          float* o = op + (h * rows + t) * dim;
          if (keys[t].empty()) {
            std::fill(o, o + dim, 0.f);
            continue;
          }
          all.push_back(Row{qp + h * qc.stride(1) + t * qc.stride(2), o, at[t].data(),
                            int64_t(keys[t].size())});
        }
      }
      if (int64_t(all.size()) > begin) parts.push_back(Part{sp, g, begin, int64_t(all.size())});
    }
  }
  if (parts.empty()) return out;
  const int64_t threads = at::get_num_threads();
  const int64_t spread = (2 * threads + int64_t(parts.size()) - 1) / int64_t(parts.size());
  std::vector<Job> jobs;
  int64_t widest = 0, tallest = 0;
  for (const Part& p : parts) {
    const int64_t n = p.end - p.begin;
    const int64_t pieces = std::clamp<int64_t>(std::max<int64_t>((n + 11) / 12, spread), 1, n);
    const int64_t chunk = (n + pieces - 1) / pieces;
    const int64_t s = slot[alone[p.sp].first];
    for (int64_t r0 = p.begin; r0 < p.end; r0 += chunk) {
      jobs.push_back(Job{kp + s * kc.stride(0) + p.g * kc.stride(1),
                         vp + s * vc.stride(0) + p.g * vc.stride(1), pos[p.sp].data(),
                         int64_t(pos[p.sp].size()), all.data() + r0, std::min(chunk, p.end - r0)});
      widest = std::max(widest, jobs.back().nu);
      tallest = std::max(tallest, jobs.back().nr);
    }
  }
  const JobFn run = ActiveJob();
  // Threads split jobs (rows), never a row's sums.
  at::parallel_for(0, int64_t(jobs.size()), 1, [&](int64_t begin, int64_t stop) {
    std::vector<float> buf(tallest * widest + widest + tallest + 16);
    const Scratch x{buf.data(), widest, buf.data() + tallest * widest,
                    buf.data() + tallest * widest + widest + 16};
    for (int64_t i = begin; i < stop; ++i) run(jobs[i], shape, x);
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(torchchat, m) {
  m.def(
      "row_sdpa(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? slots, float scale, "
      "float softcap, int max_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchchat, CPU, m) { m.impl("row_sdpa", &RowSdpa); }

}  // namespace
}  // namespace torchchat::kernels
