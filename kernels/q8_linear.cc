#include "kernels/q8_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/fp16.h"
#include "kernels/isa.h"
#include "kernels/tile_gemm.h"

namespace torchchat::kernels {
namespace {

using isa::kPf;
#if TC_Q4_X86
using isa::HsumAvx2;
using isa::HsumAvx512;
#endif
#if TC_Q4_ARM
using isa::Fp16Neon;
using isa::LoadBlockX;
#endif
using tile::kNR;  // weight rows per tile

// The unembedding runs once per sequence in a step, so its M is the number
// of sequences a server decodes together, not a prompt length (only eval's
// full logits run it per position, at window lengths). Its int16 path beats
// the fp32 one well past 8 rows (q4_bench, 49152x576, 2 threads: 5.2 vs 8.7
// ms at M = 8, 13 vs 21 ms at M = 16).
constexpr int64_t kQ8Int16MaxM = 32;
// From here Q8_0 runs dequantized tiles, like Q4 from its kTileMinM.
constexpr int64_t kQ8TileMinM = kQ8Int16MaxM;

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
  const int64_t nb = Q8NumBlocks(a.w->k);
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
  const int64_t nb = Q8NumBlocks(a.w->k);
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
  const int64_t nb = Q8NumBlocks(a.w->k);
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
  const int64_t nb = Q8NumBlocks(a.w->k);
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
  const int64_t nb = Q8NumBlocks(a.w->k);
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

// A path's kernels: rows with fp32 x, and with x rounded to int16 (nullptr:
// the path has none).
struct Q8Kernels {
  Q8RowsFn rows;
  Q8RowsFn rows16 = nullptr;
};

const Q8Kernels& KernelsFor(isa::Path p) {
  static const Q8Kernels scalar{Q8RowsScalar};
#if TC_Q4_X86
  static const Q8Kernels avx2{Q8RowsAvx2}, avx512{Q8RowsAvx512}, vnni{Q8RowsAvx512, Q8RowsVnni};
  if (p == isa::Path::kAvx2) return avx2;
  if (p == isa::Path::kAvx512) return avx512;
  if (p == isa::Path::kAvx512Vnni) return vnni;
#endif
#if TC_Q4_ARM
  static const Q8Kernels neon{Q8RowsNeon};
  if (p == isa::Path::kNeon) return neon;
#endif
  return scalar;
}

void DequantQ8Row(const Q8Weight& w, int64_t row, float* out) {
  const int64_t nb = Q8NumBlocks(w.k);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = Fp16ToFp32(w.scales[row * nb + b]);
    const int8_t* q = w.qs + (row * nb + b) * 32;
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = d * float(q[j]);
  }
}

struct Q8Job {
  Q8RowsFn fn;
  Q8Args args;
  // Set: the tiles of these micro-kernels instead of fn (prefill sizes).
  const tile::MicroFn* tiled = nullptr;
};

void RunQ8Job(void* ctx, int64_t begin, int64_t end) {
  const Q8Job& j = *static_cast<const Q8Job*>(ctx);
  if (j.tiled != nullptr) {
    const Q8Args& a = j.args;
    tile::TileRows(
        j.tiled, [&](int64_t row, float* out) { DequantQ8Row(*a.w, row, out); }, a.x, a.m, a.ldx,
        a.w->n, a.bias, a.y, begin, end);
  } else {
    j.fn(j.args, begin, end);
  }
}

}  // namespace

void Q8Linear(const float* x, int64_t m, const Q8Weight& w, const float* bias, float* y,
              const Q4ParallelFor* pf) {
  if (m <= 0 || w.n <= 0) return;
  const int64_t kp = Q8NumBlocks(w.k) * 32;
  const float* xp = isa::PadToBlocks(x, m, w.k, kp);
  const isa::Path path = isa::Active();
  const Q8Kernels& kern = KernelsFor(path);
  const tile::MicroFn* micro = isa::Micro(path);
  Q8Job job{kern.rows, Q8Args{xp, m, kp, &w, bias, y}};
  // Prefill (a Q8_0 GGUF's layer linears over a prompt, eval's full
  // logits): dequantized tiles, past where the rows kernels win.
  const bool tiled = m >= kQ8TileMinM && micro != nullptr;
  if (tiled) job.tiled = micro;
  // Like Q4Linear, x is rounded for decode only (here, up to kQ8Int16MaxM
  // sequences at once); full logits over a window stay exact.
  if (!tiled && kern.rows16 != nullptr && m < kQ8Int16MaxM) {
    const int64_t nb = kp / 32, ldq = nb * 32, lds = (nb + 15) / 16 * 16;
    thread_local std::vector<int16_t> xq;
    thread_local std::vector<float> xsc;
    xq.resize(size_t(m * ldq));
    xsc.assign(size_t(m * lds), 0.f);
    bool ok = true;
    for (int64_t i = 0; i < m && ok; ++i)
      ok = isa::QuantizeX16(xp + i * kp, nb, xq.data() + i * ldq, xsc.data() + i * lds);
    if (ok) {
      job.args.xq = xq.data();
      job.args.xsc = xsc.data();
      job.args.ldq = ldq;
      job.args.lds = lds;
      job.fn = kern.rows16;
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

}  // namespace torchchat::kernels
