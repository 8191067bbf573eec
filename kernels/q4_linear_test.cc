#include "kernels/q4_linear.h"

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
  Q4Weight view() const { return Q4Weight{qs.data(), scales.data(), n, k}; }
  float d(int64_t r, int64_t b) const { return fp16_to_fp32(scales[r * 2 * nb() + b]); }
  float m(int64_t r, int64_t b) const { return fp16_to_fp32(scales[r * 2 * nb() + nb() + b]); }
  int q(int64_t r, int64_t c) const {
    const uint8_t byte = qs[(r * nb() + c / 32) * 16 + (c % 32) % 16];
    return (c % 32) < 16 ? (byte & 0xF) : (byte >> 4);
  }
  int64_t nb() const { return q4_num_blocks(k); }
};

Packed random_packed(int64_t n, int64_t k, std::mt19937& rng, float dscale = 0.05f) {
  Packed p{n, k, {}, {}};
  p.qs.resize(size_t(n * p.nb() * 16));
  p.scales.resize(size_t(n * 2 * p.nb()));
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> g(0.f, 1.f);
  for (auto& b : p.qs) b = uint8_t(byte(rng));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < p.nb(); ++b) {
      p.scales[r * 2 * p.nb() + b] = fp32_to_fp16(std::fabs(g(rng)) * dscale);
      p.scales[r * 2 * p.nb() + p.nb() + b] = fp32_to_fp16(g(rng) * dscale * 8);
    }
  return p;
}

std::vector<float> random_vec(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// Checks q4_linear against a double-precision matmul of the weights
// dequantized as d*q + m in fp32. The kernel regroups the sum as
// d*(q.x) + m*sum(x), so its rounding error scales with sum(|d*q| + |m|)*|x|,
// not with |sum(w*x)|: the tolerance is relative to that magnitude.
// The "avx512vnni" isa rounds x to int16 per block of 32 for decode (M < 8):
// x_j is off by at most max|x_block|/65534, so its
// error bound adds sum_j |w_j| * that on top of the float rounding.
bool rounds_x(int64_t mrows) { return std::string(q4_isa()) == "avx512vnni" && mrows < 8; }

double x_rounding(const float* x, int64_t c) {
  const int64_t b0 = c / 32 * 32;
  float amax = 0.f;
  for (int64_t j = b0; j < b0 + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  return double(amax) / 65534.0 * 1.0001;
}

// x padded to whole blocks with zeros, as the kernel sees it.
std::vector<float> padded(const float* x, int64_t k) {
  std::vector<float> v(size_t(q4_num_blocks(k) * 32), 0.f);
  std::copy(x, x + k, v.begin());
  return v;
}

void check_linear(const Packed& p, int64_t mrows, bool with_bias, const Q4ParallelFor* pf, std::mt19937& rng,
                  double* worst = nullptr) {
  const int64_t n = p.n, k = p.k;
  const auto x = random_vec(size_t(mrows * k), rng);
  const auto bias = random_vec(size_t(n), rng);
  std::vector<float> y(size_t(mrows * n), NAN);
  q4_linear(x.data(), mrows, p.view(), with_bias ? bias.data() : nullptr, y.data(), pf);
  const bool xr = rounds_x(mrows);
  for (int64_t i = 0; i < mrows; ++i) {
    const auto xi = padded(x.data() + i * k, k);
    for (int64_t r = 0; r < n; ++r) {
      double ref = with_bias ? bias[r] : 0.0, mag = std::fabs(ref), xerr = 0;
      for (int64_t c = 0; c < k; ++c) {
        const float dq = p.d(r, c / 32) * float(p.q(r, c));
        const float w = dq + p.m(r, c / 32);
        ref += double(w) * x[i * k + c];
        mag += (std::fabs(double(dq)) + std::fabs(double(p.m(r, c / 32)))) * std::fabs(x[i * k + c]);
        if (xr) xerr += std::fabs(double(dq)) * x_rounding(xi.data(), c);
      }
      const double err = std::max(0.0, std::fabs(double(y[i * n + r]) - ref) - xerr);
      const double rel = err / std::max(mag, 1e-30);
      if (worst) *worst = std::max(*worst, rel);
      ASSERT_LE(rel, 1e-5) << "isa=" << q4_isa() << " M=" << mrows << " N=" << n << " K=" << k << " at (" << i
                           << "," << r << "): got " << y[i * n + r] << " want " << ref;
    }
  }
}

std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (const char* s : {"scalar", "avx2", "avx512", "avx512vnni"})
    if (q4_force_isa(s)) out.push_back(s);
  q4_force_isa("");
  return out;
}

TEST(Fp16, RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) continue;  // NaN payloads
    ASSERT_EQ(fp32_to_fp16(fp16_to_fp32(uint16_t(h))), h) << std::hex << h;
  }
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0xFBFF), -65504.0f);
  EXPECT_EQ(fp32_to_fp16(65520.f), 0x7C00);  // rounds to inf
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
}

TEST(Q4Linear, MatchesReferenceOnEveryIsaAndShape) {
  std::mt19937 rng(1234);
  double worst = 0;
  for (const auto& isa : isas()) {
    ASSERT_TRUE(q4_force_isa(isa.c_str()));
    for (int64_t k : {32, 64, 96, 160, 576, 1536, 40, 1, 31, 33, 4100})
      for (int64_t n : {1, 3, 7, 33})
        for (int64_t m : {1, 2, 3, 5, 8, 9, 17}) {
          const Packed p = random_packed(n, k, rng);
          check_linear(p, m, (m + n) % 2 == 0, nullptr, rng, &worst);
          if (HasFatalFailure()) return;
        }
  }
  q4_force_isa("");
  RecordProperty("worst_rel_err", std::to_string(worst));
  std::printf("worst relative error %.3g\n", worst);
}

TEST(Q4Linear, ThreadedMatchesSingleThreadedBitForBit) {
  std::mt19937 rng(7);
  SpinPool pool(3);
  const Q4ParallelFor pf = pool.as_parallel_for();
  for (const auto& isa : isas()) {
    ASSERT_TRUE(q4_force_isa(isa.c_str()));
    for (int64_t m : {1, 4, 16}) {
      const Packed p = random_packed(517, 1536, rng);
      const auto x = random_vec(size_t(m * p.k), rng);
      std::vector<float> y1(size_t(m * p.n)), y2(size_t(m * p.n));
      q4_linear(x.data(), m, p.view(), nullptr, y1.data(), nullptr);
      q4_linear(x.data(), m, p.view(), nullptr, y2.data(), &pf);
      ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << isa << " M=" << m;
      check_linear(p, m, true, &pf, rng);
    }
  }
  q4_force_isa("");
}

TEST(Q4Linear, AdversarialScales) {
  std::mt19937 rng(99);
  for (const auto& isa : isas()) {
    ASSERT_TRUE(q4_force_isa(isa.c_str()));
    // Subnormal and huge fp16 scales, zero scales, and mins that cancel d*q.
    for (float ds : {1e-7f, 3e-5f, 2000.f}) {
      Packed p = random_packed(9, 96, rng, ds);
      check_linear(p, 1, false, nullptr, rng);
      check_linear(p, 9, true, nullptr, rng);
    }
    Packed p = random_packed(5, 64, rng);
    for (int64_t r = 0; r < p.n; ++r)
      for (int64_t b = 0; b < p.nb(); ++b) {
        if (r % 2) p.scales[r * 2 * p.nb() + b] = 0;
        // m = -7.5 d: weights straddle zero, d*q and m cancel.
        p.scales[r * 2 * p.nb() + p.nb() + b] = fp32_to_fp16(-7.5f * p.d(r, b));
      }
    check_linear(p, 1, false, nullptr, rng);
    check_linear(p, 12, false, nullptr, rng);
    if (HasFatalFailure()) return;
  }
  q4_force_isa("");
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
    ASSERT_EQ(nullptr, q4_pack_gguf(type, raw.data(), n, k, qs.data(), sc.data()));
    std::vector<float> w(size_t(n * k));
    q4_dequantize(Q4Weight{qs.data(), sc.data(), n, k}, w.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const uint8_t* blk = raw.data() + (r * nb + c / 32) * bs;
        uint16_t dh, mh;
        std::memcpy(&dh, blk, 2);
        std::memcpy(&mh, blk + 2, 2);
        const uint8_t byte_ = blk[bs - 16 + (c % 32) % 16];
        const int q = (c % 32) < 16 ? (byte_ & 0xF) : (byte_ >> 4);
        const float want = type == 2 ? fp16_to_fp32(dh) * float(q - 8)
                                     : fp16_to_fp32(dh) * float(q) + fp16_to_fp32(mh);
        ASSERT_EQ(w[r * k + c], want) << "type " << type << " (" << r << "," << c << ")";
      }
  }
}

TEST(Q4Pack, RejectsBadInput) {
  uint8_t raw[20] = {};
  uint8_t qs[16];
  uint16_t sc[2];
  EXPECT_NE(nullptr, q4_pack_gguf(8, raw, 1, 32, qs, sc));
  EXPECT_NE(nullptr, q4_pack_gguf(3, raw, 1, 33, qs, sc));
  EXPECT_NE(nullptr, q4_pack_gguf(3, raw, 0, 32, qs, sc));
  const uint16_t big = 0x7000;  // 8192: 8*d overflows fp16
  std::memcpy(raw, &big, 2);
  EXPECT_NE(nullptr, q4_pack_gguf(2, raw, 1, 32, qs, sc));
}

TEST(Q8Linear, MatchesReferenceOnEveryIsaAndShape) {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> byte(-128, 127);
  std::normal_distribution<float> g(0.f, 1.f);
  SpinPool pool(2);
  const Q4ParallelFor pf = pool.as_parallel_for();
  for (const auto& isa : isas()) {
    ASSERT_TRUE(q4_force_isa(isa.c_str()));
    for (int64_t k : {32, 40, 576, 1})
      for (int64_t n : {1, 5, 67})
        for (int64_t m : {1, 3, 9}) {
          const int64_t nb = q4_num_blocks(k);
          std::vector<int8_t> qs(size_t(n * nb * 32));
          std::vector<uint16_t> sc(size_t(n * nb));
          for (auto& q : qs) q = int8_t(byte(rng));
          for (auto& d : sc) d = fp32_to_fp16(g(rng) * 0.01f);
          const auto x = random_vec(size_t(m * k), rng);
          const auto bias = random_vec(size_t(n), rng);
          std::vector<float> y(size_t(m * n));
          q8_linear(x.data(), m, Q8Weight{qs.data(), sc.data(), n, k}, bias.data(), y.data(), n > 8 ? &pf : nullptr);
          for (int64_t i = 0; i < m; ++i) {
            const auto xi = padded(x.data() + i * k, k);
            for (int64_t r = 0; r < n; ++r) {
              double ref = bias[r], mag = std::fabs(bias[r]), xerr = 0;
              for (int64_t c = 0; c < k; ++c) {
                const float w = fp16_to_fp32(sc[r * nb + c / 32]) * float(qs[(r * nb + c / 32) * 32 + c % 32]);
                ref += double(w) * x[i * k + c];
                mag += std::fabs(double(w) * x[i * k + c]);
                if (rounds_x(m)) xerr += std::fabs(double(w)) * x_rounding(xi.data(), c);
              }
              ASSERT_LE(std::fabs(y[i * n + r] - ref), 1e-5 * mag + xerr + 1e-30)
                  << isa << " M=" << m << " N=" << n << " K=" << k;
            }
          }
        }
  }
  q4_force_isa("");
}

// x the 16-bit path cannot represent (inf/nan, or a block so small that
// 32767/max overflows) goes through the float kernel instead: same results
// as "avx512", no garbage.
TEST(Q4Linear, RoundedXFallsBackToFloatOnUnrepresentableX) {
  if (!q4_force_isa("avx512vnni")) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937 rng(3);
  const Packed p = random_packed(8, 96, rng);
  for (float bad : {INFINITY, NAN, 1e-35f}) {
    auto x = random_vec(96, rng);
    if (bad == 1e-35f) {
      for (int j = 32; j < 64; ++j) x[j] = bad * float(j - 40);
    } else {
      x[40] = bad;
    }
    std::vector<float> y16(8), yf(8);
    ASSERT_TRUE(q4_force_isa("avx512vnni"));
    q4_linear(x.data(), 1, p.view(), nullptr, y16.data());
    ASSERT_TRUE(q4_force_isa("avx512"));
    q4_linear(x.data(), 1, p.view(), nullptr, yf.data());
    for (int r = 0; r < 8; ++r)
      if (std::isnan(yf[r])) {
        EXPECT_TRUE(std::isnan(y16[r])) << bad;
      } else {
        EXPECT_EQ(y16[r], yf[r]) << bad << " row " << r;
      }
  }
  q4_force_isa("");
}

}  // namespace
}  // namespace torchchat::kernels
