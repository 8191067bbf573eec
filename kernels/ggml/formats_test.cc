// The AVX2 codes of every format equal the scalar reference's, and the
// decode, prefill and scalar paths of Linear agree. (linear_test.py checks
// the reference itself against gguf-py's dequantize.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/ggml/formats.h"
#include "kernels/ggml/linear.h"
#if defined(__x86_64__)
#include "kernels/ggml/formats_avx2.h"
#endif

namespace torchchat::kernels::ggml {
namespace {

#if defined(__x86_64__)
// Over random chunks: each group's codes, and each half's scale (and
// offset, where the format has one), as the scalar reference has them.
template <class F>
TC_GGML_AVX2 void ExpectSameAsScalar() {
  std::mt19937 rng(1);
  std::vector<uint8_t> p(Avx2<F>::kChunkBytes);
  const int blocks = 256 / F::kElems;
  for (int it = 0; it < 200; ++it) {
    for (auto& v : p) v = uint8_t(rng());
    alignas(32) float s[16], m[16];
    Avx2<F>::ChunkScales(p.data(), s, m);
    for (int g = 0; g < 8; ++g) {
      const uint8_t* blk = p.data() + (g / (F::kElems / 32)) * F::kBytes;
      const int gb = g % (F::kElems / 32);  // the group within its block
      int16_t want[32], got[32];
      F::Codes(blk, gb, want);
      __m256i c[2];
      Avx2<F>::Codes(p.data(), g, c);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(got), c[0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(got + 16), c[1]);
      ASSERT_EQ(0, std::memcmp(want, got, sizeof(want))) << int(F::kType) << " group " << g;
      float ws[F::kElems / 16], wm[F::kElems / 16];
      F::Scales(blk, ws, wm);
      for (int h = 0; h < 2; ++h) {
        const float a = ws[2 * gb + h], b = s[2 * g + h];
        if (std::isfinite(a)) ASSERT_EQ(a, b) << int(F::kType) << " scale " << 2 * g + h;
        if (F::kMin && std::isfinite(wm[2 * gb + h]))
          ASSERT_EQ(wm[2 * gb + h], m[2 * g + h]) << int(F::kType) << " offset " << 2 * g + h;
      }
    }
    (void)blocks;
  }
}

TEST(Formats, Avx2EqualsScalar) {
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2";
  ExpectSameAsScalar<Q4_0>();
  ExpectSameAsScalar<Q4_1>();
  ExpectSameAsScalar<Q5_0>();
  ExpectSameAsScalar<Q5_1>();
  ExpectSameAsScalar<Q8_0>();
  ExpectSameAsScalar<IQ4_NL>();
  ExpectSameAsScalar<Q2_K>();
  ExpectSameAsScalar<Q3_K>();
  ExpectSameAsScalar<Q4_K>();
  ExpectSameAsScalar<Q5_K>();
  ExpectSameAsScalar<Q6_K>();
  ExpectSameAsScalar<IQ4_XS>();
}
#endif

// Random bytes with every fp16 scale field small and finite.
std::vector<uint8_t> RandomWeights(int type, int64_t n, int64_t k, std::mt19937& rng) {
  const int64_t row = RowBytes(type, k);
  std::vector<uint8_t> w(size_t(n * row));
  for (auto& v : w) v = uint8_t(rng());
  std::vector<float> out(static_cast<size_t>(k));
  std::normal_distribution<float> g(0.f, 0.02f);
  // Re-roll each row until it dequantizes finite (a random fp16 can be inf).
  for (int64_t r = 0; r < n; ++r) {
    for (int tries = 0; tries < 1000; ++tries) {
      const int64_t idx = r;
      DequantizeRows(w.data(), type, k, &idx, 1, out.data());
      bool ok = true;
      for (float f : out) ok = ok && std::isfinite(f) && std::fabs(f) < 1e4f;
      if (ok) break;
      for (int64_t i = 0; i < row; ++i) w[size_t(r * row + i)] = uint8_t(rng() & 0x3F);
    }
  }
  return w;
}

// The formats with an int8 prefill GEMM (linear.cc's Gemm8Avx2 and
// Gemm8Vnni): with int8 x they round it at every m. Every block format but
// Q3_K.
bool HasGemm(int type) { return type != kF32 && type != kF16 && type != kBF16 && type != kQ3_K; }

TEST(Linear, PathsAgree) {
  const int types[] = {kF32,  kF16,  kBF16, kQ4_0, kQ4_1, kQ5_0,   kQ5_1,  kQ8_0,
                       kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kIQ4_NL, kIQ4_XS};
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  const int64_t n = 37;
  for (int type : types)
    for (int64_t k : {512, 576}) {  // 576: whole chunks and a tail (SmolLM2's width)
      if (RowBytes(type, k) < 0) continue;
      const auto w = RandomWeights(type, n, k, rng);
      std::vector<int64_t> rows(n);
      for (int64_t i = 0; i < n; ++i) rows[size_t(i)] = i;
      std::vector<float> deq(size_t(n * k));
      ASSERT_EQ(nullptr, DequantizeRows(w.data(), type, k, rows.data(), n, deq.data()));
      for (int64_t m : {1, 3, 5, 16, 40}) {
        std::vector<float> x(size_t(m * k)), ref(size_t(m * n)), y(size_t(m * n));
        for (auto& v : x) v = g(rng);
        ASSERT_TRUE(ForceIsa("scalar"));
        ASSERT_EQ(nullptr, Linear(x.data(), m, w.data(), type, n, k, nullptr, ref.data()));
        // Below 32 rows a block type rounds x to 8 bits (1/254 of the
        // largest value of its 32, or for a 256-element format of its
        // 256, as llama.cpp's Q8_K) or to 16 per 32; floats and tiles
        // are exact. int8's bound: each x off by at most 1/254 of its
        // block's largest |x|, times |w|; float rounding on top. Both
        // bounds are computed once here, not per path: under QEMU
        // (//tests:avx2_kind_test) a per-element block scan cost a minute.
        const bool block = type != kF32 && type != kF16 && type != kBF16;
        const int64_t xb = BlockElems(type) == 256 ? 256 : 32;
        std::vector<float> amax(size_t(m * k));
        for (int64_t i = 0; i < m; ++i)
          for (int64_t b = 0; b < k; b += xb) {
            float a = 0;
            for (int64_t e = b; e < std::min(k, b + xb); ++e)
              a = std::max(a, std::fabs(x[i * k + e]));
            std::fill(amax.begin() + i * k + b, amax.begin() + i * k + std::min(k, b + xb), a);
          }
        std::vector<double> scale(size_t(m * n), 1e-6), bound(size_t(m * n), 0);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j)
            for (int64_t e = 0; e < k; ++e) {
              scale[i * n + j] += std::fabs(deq[j * k + e] * x[i * k + e]);
              bound[i * n + j] += std::fabs(deq[j * k + e]) * amax[i * k + e] / 254;
            }
        for (const char* isa : {"avx2", "avx512vnni"})
          for (const char* dx : {"int16", "int8"}) {
            if (!ForceIsa(isa)) continue;  // not this CPU's
            ASSERT_TRUE(ForceDecodeX(dx));
            ASSERT_EQ(nullptr, Linear(x.data(), m, w.data(), type, n, k, nullptr, y.data()));
            const bool int8 = (m < 32 || HasGemm(type)) && block && std::string(dx) == "int8";
            for (int64_t i = 0; i < m; ++i)
              for (int64_t j = 0; j < n; ++j)
                EXPECT_NEAR(y[i * n + j], ref[i * n + j],
                            3e-5 * scale[i * n + j] + (int8 ? bound[i * n + j] : 0))
                    << TypeName(type) << " k=" << k << " m=" << m << " (" << i << ", " << j
                    << ") on " << Isa() << ", x " << dx;
          }
        ASSERT_TRUE(ForceIsa(""));
        ASSERT_TRUE(ForceDecodeX(""));
      }
    }
}

// Two threads, as at::parallel_for or ExecuTorch's pool would split the
// weight rows: [0, cut) on a second thread, the rest here, cut a whole
// number of grains at `at` of n.
struct TwoThreads {
  double at;
  static void Run(void* self, int64_t n, int64_t grain, Q4Task fn, void* ctx) {
    const double at = static_cast<TwoThreads*>(self)->at;
    const int64_t cut = std::min(n, std::max<int64_t>(grain, int64_t(n * at) / grain * grain));
    std::thread t(fn, ctx, 0, cut);
    if (cut < n) fn(ctx, cut, n);
    t.join();
  }
};

// A row's result is the same bits whatever rows share its call and however
// the weight rows are split across threads: one id alone and the same id
// in a speculative draft must not round differently. Every format, path
// and decode precision, block formats below 32 rows (from 32 they run the
// exact tiles), floats at any m; m spans the old switch to the tiles at 8,
// and one row cannot be rounded (inf).
TEST(Linear, RowsAreIndependentOfTheBatchAndThreads) {
  const int types[] = {kF32,  kF16,  kBF16, kQ4_0, kQ4_1, kQ5_0,   kQ5_1,  kQ8_0,
                       kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kIQ4_NL, kIQ4_XS};
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  const int64_t n = 70, m = 40;
  TwoThreads half{0.5}, third{0.3};
  const Q4ParallelFor two{TwoThreads::Run, &half}, other{TwoThreads::Run, &third};
  for (int type : types)
    for (int64_t k : {512, 576}) {
      if (RowBytes(type, k) < 0) continue;
      const auto w = RandomWeights(type, n, k, rng);
      std::vector<float> x(static_cast<size_t>(m * k)), bias(static_cast<size_t>(n));
      for (auto& v : x) v = g(rng);
      for (auto& v : bias) v = g(rng);
      x[size_t(9 * k + 3)] = INFINITY;  // row 9: beyond int8's and int16's reach
      for (const char* isa : {"scalar", "avx2", "avx512vnni"})
        for (const char* dx : {"int8", "int16"}) {
          if (!ForceIsa(isa)) continue;
          ASSERT_TRUE(ForceDecodeX(dx));
          std::vector<float> alone(size_t(m * n)), y(size_t(m * n));
          for (int64_t i = 0; i < m; ++i)
            ASSERT_EQ(nullptr, Linear(x.data() + i * k, 1, w.data(), type, n, k, bias.data(),
                                      alone.data() + i * n));
          const bool block = type != kF32 && type != kF16 && type != kBF16;
          const bool any_m = !block || (HasGemm(type) && std::string(dx) == "int8" &&
                                        std::string(isa) != "scalar");
          for (int64_t rows : {2, 4, 5, 7, 8, 9, 16, 31, 32, 33, 40})
            if (any_m || rows < 32)
              for (const Q4ParallelFor* pf :
                   {static_cast<const Q4ParallelFor*>(nullptr), &two, &other}) {
                std::fill(y.begin(), y.end(), 0.f);
                ASSERT_EQ(nullptr,
                          Linear(x.data(), rows, w.data(), type, n, k, bias.data(), y.data(), pf));
                ASSERT_EQ(0, std::memcmp(y.data(), alone.data(), size_t(rows * n) * sizeof(float)))
                    << TypeName(type) << " k=" << k << " m=" << rows << " on " << Isa() << ", x "
                    << dx << (pf ? ", 2 threads" : "");
              }
        }
      ASSERT_TRUE(ForceIsa(""));
      ASSERT_TRUE(ForceDecodeX(""));
    }
}

// The int8 GEMM (prefill) of every format that has one, on both ISAs: at
// m around the switch from the decode rows (32) and at a prompt's size,
// with a tail of rows past the GEMM's groups, one row that cannot be
// rounded and two threads, each row is the same bits as that row alone
// (decode), and within the int8 bound of the exact product.
TEST(Linear, GemmRowsEqualDecode) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  const int64_t n = 37;
  TwoThreads half{0.5};
  const Q4ParallelFor two{TwoThreads::Run, &half};
  for (int type :
       {kQ4_K, kQ5_K, kQ6_K, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ8_0, kQ2_K, kIQ4_NL, kIQ4_XS}) {
    ASSERT_TRUE(HasGemm(type));
    // 32-element formats: three whole chunks of 256 and four blocks past them.
    const int64_t xb = BlockElems(type) == 256 ? 256 : 32, k = xb == 256 ? 768 : 896;
    const auto w = RandomWeights(type, n, k, rng);
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = i;
    std::vector<float> deq(size_t(n * k));
    ASSERT_EQ(nullptr, DequantizeRows(w.data(), type, k, ids.data(), n, deq.data()));
    for (int64_t m : {31, 32, 33, 45, 256}) {
      std::vector<float> x(static_cast<size_t>(m * k)), bias(static_cast<size_t>(n)),
          alone(static_cast<size_t>(m * n)), y(static_cast<size_t>(m * n));
      for (auto& v : x) v = g(rng);
      for (auto& v : bias) v = g(rng);
      x[size_t(m / 2 * k + 5)] = NAN;  // this row runs alone through the exact tiles
      for (const char* isa : {"avx2", "avx512vnni"}) {
        if (!ForceIsa(isa)) continue;
        ASSERT_TRUE(ForceDecodeX("int8"));
        for (int64_t i = 0; i < m; ++i)
          ASSERT_EQ(nullptr, Linear(x.data() + i * k, 1, w.data(), type, n, k, bias.data(),
                                    alone.data() + i * n));
        for (const Q4ParallelFor* pf : {static_cast<const Q4ParallelFor*>(nullptr), &two}) {
          std::fill(y.begin(), y.end(), 0.f);
          ASSERT_EQ(nullptr, Linear(x.data(), m, w.data(), type, n, k, bias.data(), y.data(), pf));
          for (int64_t i = 0; i < m; ++i) {
            ASSERT_EQ(0, std::memcmp(y.data() + i * n, alone.data() + i * n, n * sizeof(float)))
                << TypeName(type) << " m=" << m << " row " << i << " on " << Isa()
                << (pf ? ", 2 threads" : "");
            if (i == m / 2) {  // exact: the dequantized product
              for (int64_t j = 0; j < n; ++j) EXPECT_TRUE(std::isnan(y[size_t(i * n + j)]));
              continue;
            }
            for (int64_t j = 0; j < n; ++j) {
              double ref = bias[size_t(j)], scale = 1e-6, bound = 0;
              for (int64_t c = 0; c < k / xb; ++c) {
                float amax = 0;
                for (int64_t e = c * xb; e < c * xb + xb; ++e)
                  amax = std::max(amax, std::fabs(x[size_t(i * k + e)]));
                for (int64_t e = c * xb; e < c * xb + xb; ++e) {
                  const double wv = deq[size_t(j * k + e)], xv = x[size_t(i * k + e)];
                  ref += wv * xv;
                  scale += std::fabs(wv * xv);
                  bound += std::fabs(wv) * amax / 254;
                }
              }
              EXPECT_NEAR(y[size_t(i * n + j)], ref, 3e-5 * scale + bound)
                  << TypeName(type) << " m=" << m << " (" << i << ", " << j << ") on " << Isa();
            }
          }
        }
      }
      ASSERT_TRUE(ForceIsa(""));
      ASSERT_TRUE(ForceDecodeX(""));
    }
  }
}

// //tests:avx2_kind_test runs this on emulated CPUs and names the path
// cpuid must pick there.
TEST(Linear, PicksTheCpusPath) {
  const char* want = std::getenv("TORCHCHAT_EXPECT_GGML_ISA");
  if (want == nullptr) GTEST_SKIP() << "no TORCHCHAT_EXPECT_GGML_ISA";
  EXPECT_STREQ(Isa(), want);
}

TEST(Linear, RefusesBadShapes) {
  float x[256] = {}, y[4];
  uint8_t w[4 * 144] = {};
  EXPECT_STREQ(nullptr, Linear(x, 1, w, kQ4_K, 4, 256, nullptr, y));
  EXPECT_NE(nullptr, Linear(x, 1, w, kQ4_K, 4, 128, nullptr, y));  // not whole blocks
  EXPECT_NE(nullptr, Linear(x, 1, w, 99, 4, 256, nullptr, y));     // not a type we run
  EXPECT_EQ(-1, RowBytes(kQ6_K, 100));
  EXPECT_EQ(144, RowBytes(kQ4_K, 256));
  EXPECT_EQ(2 * 64, RowBytes(kF16, 64));
}

}  // namespace
}  // namespace torchchat::kernels::ggml
