#include "kernels/q4_linear.h"
#include "kernels/q8_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/spin_pool.h"

namespace torchchat::kernels {
namespace {

struct Packed {
  int64_t n, k;
  std::vector<uint8_t> qs;
  std::vector<uint16_t> scales;
  Q4Weight View() const { return Q4Weight{qs.data(), scales.data(), n, k}; }
  float Scale(int64_t r, int64_t b) const { return Fp16ToFp32(scales[r * 2 * NumBlocks() + b]); }
  float Min(int64_t r, int64_t b) const {
    return Fp16ToFp32(scales[r * 2 * NumBlocks() + NumBlocks() + b]);
  }
  int Code(int64_t r, int64_t c) const {
    const uint8_t byte = qs[(r * NumBlocks() + c / 32) * 16 + (c % 32) % 16];
    return (c % 32) < 16 ? (byte & 0xF) : (byte >> 4);
  }
  int64_t NumBlocks() const { return Q4NumBlocks(k); }
};

Packed RandomPacked(int64_t n, int64_t k, std::mt19937& rng, float dscale = 0.05f) {
  Packed p{n, k, {}, {}};
  p.qs.resize(size_t(n * p.NumBlocks() * 16));
  p.scales.resize(size_t(n * 2 * p.NumBlocks()));
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> g(0.f, 1.f);
  for (auto& b : p.qs) b = uint8_t(byte(rng));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < p.NumBlocks(); ++b) {
      p.scales[r * 2 * p.NumBlocks() + b] = Fp32ToFp16(std::fabs(g(rng)) * dscale);
      p.scales[r * 2 * p.NumBlocks() + p.NumBlocks() + b] = Fp32ToFp16(g(rng) * dscale * 8);
    }
  return p;
}

std::vector<float> RandomVec(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// Checks Q4Linear against a double-precision matmul of the weights
// dequantized as d*q + m in fp32. The kernel regroups the sum as
// d*(q.x) + m*sum(x), so its rounding error scales with sum(|d*q| + |m|)*|x|,
// not with |sum(w*x)|: the tolerance is relative to that magnitude.
// The "avx512vnni" isa rounds x to int16 per block of 32 for decode (M < 8):
// x_j is off by at most max|x_block|/65534, so its
// error bound adds sum_j |w_j| * that on top of the float rounding.
bool RoundsX(int64_t mrows, int64_t below = 8) {
  return std::string(Q4Isa()) == "avx512vnni" && mrows < below;
}

double XRounding(const float* x, int64_t c) {
  const int64_t b0 = c / 32 * 32;
  float amax = 0.f;
  for (int64_t j = b0; j < b0 + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  return double(amax) / 65534.0 * 1.0001;
}

// x padded to whole blocks with zeros, as the kernel sees it.
std::vector<float> Padded(const float* x, int64_t k) {
  std::vector<float> v(size_t(Q4NumBlocks(k) * 32), 0.f);
  std::copy(x, x + k, v.begin());
  return v;
}

void CheckLinear(const Packed& p, int64_t mrows, bool with_bias, const Q4ParallelFor* pf,
                 std::mt19937& rng, double* worst = nullptr) {
  const int64_t n = p.n, k = p.k;
  const auto x = RandomVec(size_t(mrows * k), rng);
  const auto bias = RandomVec(size_t(n), rng);
  std::vector<float> y(size_t(mrows * n), NAN);
  Q4Linear(x.data(), mrows, p.View(), with_bias ? bias.data() : nullptr, y.data(), pf);
  const bool xr = RoundsX(mrows);
  for (int64_t i = 0; i < mrows; ++i) {
    const auto xi = Padded(x.data() + i * k, k);
    for (int64_t r = 0; r < n; ++r) {
      double ref = with_bias ? bias[r] : 0.0, mag = std::fabs(ref), xerr = 0;
      for (int64_t c = 0; c < k; ++c) {
        const float dq = p.Scale(r, c / 32) * float(p.Code(r, c));
        const float w = dq + p.Min(r, c / 32);
        ref += double(w) * x[i * k + c];
        mag +=
            (std::fabs(double(dq)) + std::fabs(double(p.Min(r, c / 32)))) * std::fabs(x[i * k + c]);
        if (xr) xerr += std::fabs(double(dq)) * XRounding(xi.data(), c);
      }
      const double err = std::max(0.0, std::fabs(double(y[i * n + r]) - ref) - xerr);
      const double rel = err / std::max(mag, 1e-30);
      if (worst) *worst = std::max(*worst, rel);
      ASSERT_LE(rel, 1e-5) << "isa=" << Q4Isa() << " M=" << mrows << " N=" << n << " K=" << k
                           << " at (" << i << "," << r << "): got " << y[i * n + r] << " want "
                           << ref;
    }
  }
}

std::vector<std::string> Isas() {
  std::vector<std::string> out;
  for (const char* s : {"scalar", "avx2", "avx512", "avx512vnni", "neon"})
    if (Q4ForceIsa(s)) out.push_back(s);
  Q4ForceIsa("");
  return out;
}

TEST(Fp16, RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) continue;  // NaN payloads
    ASSERT_EQ(Fp32ToFp16(Fp16ToFp32(uint16_t(h))), h) << std::hex << h;
  }
  EXPECT_EQ(Fp16ToFp32(0x3C00), 1.0f);
  EXPECT_EQ(Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFp32(0xFBFF), -65504.0f);
  EXPECT_EQ(Fp32ToFp16(65520.f), 0x7C00);                       // rounds to inf
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
}

TEST(Q4Linear, MatchesReferenceOnEveryIsaAndShape) {
  std::mt19937 rng(1234);
  double worst = 0;
  for (const auto& isa : Isas()) {
    ASSERT_TRUE(Q4ForceIsa(isa.c_str()));
    for (int64_t k : {32, 64, 96, 160, 576, 1536, 40, 1, 31, 33, 4100})
      for (int64_t n : {1, 3, 7, 33})
        for (int64_t m : {1, 2, 3, 5, 8, 9, 17}) {
          const Packed p = RandomPacked(n, k, rng);
          CheckLinear(p, m, (m + n) % 2 == 0, nullptr, rng, &worst);
          if (HasFatalFailure()) return;
        }
  }
  Q4ForceIsa("");
  RecordProperty("worst_rel_err", std::to_string(worst));
  std::printf("worst relative error %.3g\n", worst);
}

TEST(Q4Linear, ThreadedMatchesSingleThreadedBitForBit) {
  std::mt19937 rng(7);
  SpinPool pool(3);
  const Q4ParallelFor pf = pool.AsParallelFor();
  for (const auto& isa : Isas()) {
    ASSERT_TRUE(Q4ForceIsa(isa.c_str()));
    for (int64_t m : {1, 4, 16}) {
      const Packed p = RandomPacked(517, 1536, rng);
      const auto x = RandomVec(size_t(m * p.k), rng);
      std::vector<float> y1(size_t(m * p.n)), y2(size_t(m * p.n));
      Q4Linear(x.data(), m, p.View(), nullptr, y1.data(), nullptr);
      Q4Linear(x.data(), m, p.View(), nullptr, y2.data(), &pf);
      ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)))
          << isa << " M=" << m;
      CheckLinear(p, m, true, &pf, rng);
    }
  }
  Q4ForceIsa("");
}

TEST(Q4Linear, AdversarialScales) {
  std::mt19937 rng(99);
  for (const auto& isa : Isas()) {
    ASSERT_TRUE(Q4ForceIsa(isa.c_str()));
    // Subnormal and huge fp16 scales, zero scales, and mins that cancel d*q.
    for (float ds : {1e-7f, 3e-5f, 2000.f}) {
      Packed p = RandomPacked(9, 96, rng, ds);
      CheckLinear(p, 1, false, nullptr, rng);
      CheckLinear(p, 9, true, nullptr, rng);
    }
    Packed p = RandomPacked(5, 64, rng);
    for (int64_t r = 0; r < p.n; ++r)
      for (int64_t b = 0; b < p.NumBlocks(); ++b) {
        if (r % 2) p.scales[r * 2 * p.NumBlocks() + b] = 0;
        // m = -7.5 d: weights straddle zero, d*q and m cancel.
        p.scales[r * 2 * p.NumBlocks() + p.NumBlocks() + b] = Fp32ToFp16(-7.5f * p.Scale(r, b));
      }
    CheckLinear(p, 1, false, nullptr, rng);
    CheckLinear(p, 12, false, nullptr, rng);
    if (HasFatalFailure()) return;
  }
  Q4ForceIsa("");
}

TEST(Q4Pack, GgufQ4_0AndQ4_1DequantizeExactly) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> byte(0, 255);
  const int64_t n = 3, k = 64, nb = 2;
  for (int type : {2, 3}) {
    const int bs = type == 2 ? 18 : 20;
    std::vector<uint8_t> raw(size_t(n * nb * bs));
    for (auto& b : raw) b = uint8_t(byte(rng));
    for (int64_t i = 0; i < n * nb; ++i) {  // finite d, m: clear the top exponent bit
      raw[i * bs + 1] &= 0x3F;
      if (type == 3) raw[i * bs + 3] &= 0x3F;
    }
    std::vector<uint8_t> qs(size_t(n * nb * 16));
    std::vector<uint16_t> sc(size_t(n * nb * 2));
    ASSERT_EQ(nullptr, Q4PackGguf(type, raw.data(), n, k, qs.data(), sc.data()));
    std::vector<float> w(size_t(n * k));
    Q4Dequantize(Q4Weight{qs.data(), sc.data(), n, k}, w.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const uint8_t* blk = raw.data() + (r * nb + c / 32) * bs;
        uint16_t dh, mh;
        std::memcpy(&dh, blk, 2);
        std::memcpy(&mh, blk + 2, 2);
        const uint8_t byte_ = blk[bs - 16 + (c % 32) % 16];
        const int q = (c % 32) < 16 ? (byte_ & 0xF) : (byte_ >> 4);
        const float want =
            type == 2 ? Fp16ToFp32(dh) * float(q - 8) : Fp16ToFp32(dh) * float(q) + Fp16ToFp32(mh);
        ASSERT_EQ(w[r * k + c], want) << "type " << type << " (" << r << "," << c << ")";
      }
  }
}

TEST(Q4Pack, RejectsBadInput) {
  uint8_t raw[20] = {};
  uint8_t qs[16];
  uint16_t sc[2];
  EXPECT_NE(nullptr, Q4PackGguf(8, raw, 1, 32, qs, sc));
  EXPECT_NE(nullptr, Q4PackGguf(3, raw, 1, 33, qs, sc));
  EXPECT_NE(nullptr, Q4PackGguf(3, raw, 0, 32, qs, sc));
  const uint16_t big = 0x7000;  // 8192: 8*d overflows fp16
  std::memcpy(raw, &big, 2);
  EXPECT_NE(nullptr, Q4PackGguf(2, raw, 1, 32, qs, sc));
}

TEST(Q8Linear, MatchesReferenceOnEveryIsaAndShape) {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> byte(-128, 127);
  std::normal_distribution<float> g(0.f, 1.f);
  SpinPool pool(2);
  const Q4ParallelFor pf = pool.AsParallelFor();
  for (const auto& isa : Isas()) {
    ASSERT_TRUE(Q4ForceIsa(isa.c_str()));
    for (int64_t k : {32, 40, 576, 1})
      for (int64_t n : {1, 5, 67})
        for (int64_t m : {1, 3, 9, 33}) {  // the int16 path below 32 rows
          const int64_t nb = Q8NumBlocks(k);
          std::vector<int8_t> qs(size_t(n * nb * 32));
          std::vector<uint16_t> sc(size_t(n * nb));
          for (auto& q : qs) q = int8_t(byte(rng));
          for (auto& d : sc) d = Fp32ToFp16(g(rng) * 0.01f);
          const auto x = RandomVec(size_t(m * k), rng);
          const auto bias = RandomVec(size_t(n), rng);
          std::vector<float> y(size_t(m * n));
          Q8Linear(x.data(), m, Q8Weight{qs.data(), sc.data(), n, k}, bias.data(), y.data(),
                   n > 8 ? &pf : nullptr);
          for (int64_t i = 0; i < m; ++i) {
            const auto xi = Padded(x.data() + i * k, k);
            for (int64_t r = 0; r < n; ++r) {
              double ref = bias[r], mag = std::fabs(bias[r]), xerr = 0;
              for (int64_t c = 0; c < k; ++c) {
                const float w =
                    Fp16ToFp32(sc[r * nb + c / 32]) * float(qs[(r * nb + c / 32) * 32 + c % 32]);
                ref += double(w) * x[i * k + c];
                mag += std::fabs(double(w) * x[i * k + c]);
                if (RoundsX(m, 32)) xerr += std::fabs(double(w)) * XRounding(xi.data(), c);
              }
              ASSERT_LE(std::fabs(y[i * n + r] - ref), 1e-5 * mag + xerr + 1e-30)
                  << isa << " M=" << m << " N=" << n << " K=" << k;
            }
          }
        }
  }
  Q4ForceIsa("");
}

// x the 16-bit path cannot represent (inf/nan, or a block so small that
// 32767/max overflows) goes through the float kernel instead: same results
// as "avx512", no garbage.
TEST(Q4Linear, RoundedXFallsBackToFloatOnUnrepresentableX) {
  if (!Q4ForceIsa("avx512vnni")) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937 rng(3);
  const Packed p = RandomPacked(8, 96, rng);
  for (float bad : {INFINITY, NAN, 1e-35f}) {
    auto x = RandomVec(96, rng);
    if (bad == 1e-35f) {
      for (int j = 32; j < 64; ++j) x[j] = bad * float(j - 40);
    } else {
      x[40] = bad;
    }
    std::vector<float> y16(8), yf(8);
    ASSERT_TRUE(Q4ForceIsa("avx512vnni"));
    Q4Linear(x.data(), 1, p.View(), nullptr, y16.data());
    ASSERT_TRUE(Q4ForceIsa("avx512"));
    Q4Linear(x.data(), 1, p.View(), nullptr, yf.data());
    for (int r = 0; r < 8; ++r)
      if (std::isnan(yf[r])) {
        EXPECT_TRUE(std::isnan(y16[r])) << bad;
      } else {
        EXPECT_EQ(y16[r], yf[r]) << bad << " row " << r;
      }
  }
  Q4ForceIsa("");
}

}  // namespace
}  // namespace torchchat::kernels
