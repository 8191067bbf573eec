#include "kernels/et_llama_ops.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace torchchat::et_ops {
namespace {

using executorch::extension::make_tensor_ptr;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Textbook attention in double precision. mask: [S, L] additive or empty.
std::vector<float> Reference(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, const std::vector<float>& mask, int B,
                             int S, int Hq, int L, int Hkv, int D, int start_pos, bool causal) {
  std::vector<float> out(static_cast<size_t>(B) * S * Hq * D);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < S; ++i)
      for (int h = 0; h < Hq; ++h) {
        const int hk = h / (Hq / Hkv);
        const int keys = causal ? start_pos + i + 1 : (mask.empty() ? start_pos + S : L);
        std::vector<double> w(keys);
        double max = -INFINITY;
        for (int j = 0; j < keys; ++j) {
          double s = 0;
          for (int x = 0; x < D; ++x)
            s += double(q[((b * S + i) * Hq + h) * D + x]) * k[((b * L + j) * Hkv + hk) * D + x];
          s /= std::sqrt(double(D));
          if (!mask.empty()) s += mask[i * L + j];
          w[j] = s;
          max = std::max(max, s);
        }
        double sum = 0;
        for (auto& x : w) sum += (x = std::exp(x - max));
        for (int x = 0; x < D; ++x) {
          double acc = 0;
          for (int j = 0; j < keys; ++j) acc += w[j] * v[((b * L + j) * Hkv + hk) * D + x];
          out[((b * S + i) * Hq + h) * D + x] = float(acc / sum);
        }
      }
  return out;
}

void ExpectNear(const std::vector<float>& want, const float* got) {
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(want[i], got[i], 1e-4) << "at " << i;
}

TEST(EtLlamaOps, Registered) {
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("llama::custom_sdpa.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("llama::update_cache.out"));
}

TEST(EtLlamaOps, CausalGroupedQueryMatchesReference) {
  const int B = 2, S = 3, Hq = 6, L = 16, Hkv = 2, D = 72, start = 5;
  auto qd = Random(B * S * Hq * D, 1), kd = Random(B * L * Hkv * D, 2),
       vd = Random(B * L * Hkv * D, 3);
  // Positions past start + S hold garbage that must not be read.
  for (int b = 0; b < B; ++b)
    for (int j = start + S; j < L; ++j)
      for (int x = 0; x < Hkv * D; ++x) kd[(b * L + j) * Hkv * D + x] = NAN;
  auto q = make_tensor_ptr({B, S, Hq, D}, qd);
  auto k = make_tensor_ptr({B, L, Hkv, D}, kd);
  auto v = make_tensor_ptr({B, L, Hkv, D}, vd);
  auto out = make_tensor_ptr({B, S, Hq, D}, std::vector<float>(B * S * Hq * D));
  KernelRuntimeContext ctx;
  CustomSdpaOut(ctx, *q, *k, *v, start, std::nullopt, 0.0, true, std::nullopt, *out);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  ExpectNear(Reference(qd, kd, vd, {}, B, S, Hq, L, Hkv, D, start, true),
             out->const_data_ptr<float>());
}

TEST(EtLlamaOps, AdditiveMaskMatchesReference) {
  const int B = 1, S = 4, Hq = 2, L = 8, Hkv = 1, D = 16;
  auto qd = Random(S * Hq * D, 4), kd = Random(L * D, 5), vd = Random(L * D, 6);
  auto md = Random(S * L, 7);
  md[3] = -std::numeric_limits<float>::infinity();
  auto q = make_tensor_ptr({B, S, Hq, D}, qd);
  auto k = make_tensor_ptr({B, L, Hkv, D}, kd);
  auto v = make_tensor_ptr({B, L, Hkv, D}, vd);
  auto m = make_tensor_ptr({S, L}, md);
  auto out = make_tensor_ptr({B, S, Hq, D}, std::vector<float>(S * Hq * D));
  KernelRuntimeContext ctx;
  std::optional<executorch::aten::Tensor> mask(*m);
  CustomSdpaOut(ctx, *q, *k, *v, 0, mask, 0.0, false, std::nullopt, *out);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  ExpectNear(Reference(qd, kd, vd, md, B, S, Hq, L, Hkv, D, 0, false),
             out->const_data_ptr<float>());
}

TEST(EtLlamaOps, SdpaRefusesPositionsPastTheCache) {
  auto q = make_tensor_ptr({1, 2, 1, 4}, std::vector<float>(8));
  auto k = make_tensor_ptr({1, 4, 1, 4}, std::vector<float>(16));
  auto out = make_tensor_ptr({1, 2, 1, 4}, std::vector<float>(8));
  KernelRuntimeContext ctx;
  CustomSdpaOut(ctx, *q, *k, *k, 3, std::nullopt, 0.0, true, std::nullopt, *out);
  EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
}

TEST(EtLlamaOps, UpdateCacheWritesRowsInPlace) {
  const int B = 2, S = 2, L = 5, H = 3, D = 4;
  std::vector<float> vd(B * S * H * D);
  for (size_t i = 0; i < vd.size(); ++i) vd[i] = float(i + 1);
  auto value = make_tensor_ptr({B, S, H, D}, vd);
  auto cache = make_tensor_ptr({B, L, H, D}, std::vector<float>(B * L * H * D));
  auto out = make_tensor_ptr({1}, std::vector<float>(1));
  KernelRuntimeContext ctx;
  UpdateCacheOut(ctx, *value, *cache, 3, *out);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  const float* c = cache->const_data_ptr<float>();
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < L; ++j)
      for (int x = 0; x < H * D; ++x) {
        const float want = (j >= 3) ? vd[((b * S) + j - 3) * H * D + x] : 0.f;
        ASSERT_EQ(c[(b * L + j) * H * D + x], want) << b << "," << j << "," << x;
      }
  KernelRuntimeContext bad;
  UpdateCacheOut(bad, *value, *cache, 4, *out);
  EXPECT_EQ(bad.failure_state(), Error::InvalidArgument);
}

}  // namespace
}  // namespace torchchat::et_ops
