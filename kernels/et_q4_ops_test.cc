// The ExecuTorch q4/q8 kernels give bit for bit what the q4_linear core
// gives on one thread (the torch op's numbers come from the same core: see
// export/q4_pte_test.py), on every ISA path this CPU runs, for decode and
// prefill shapes with K not a multiple of 256 and M = 1..9.
#include "kernels/et_q4_ops.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/q4_linear.h"
#include "kernels/q8_linear.h"

namespace torchchat::et_ops {
namespace {

using executorch::aten::ScalarType;
using executorch::extension::make_tensor_ptr;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
using kernels::Fp32ToFp16;
using kernels::Q4NumBlocks;

constexpr const char* kIsas[] = {"avx512vnni", "avx512", "avx2", "neon", "scalar"};

struct Shape {
  int n, k;
};
// K % 32 != 0 (100), K a multiple of 32 but not of 256 (96, 608), and
// enough rows to split across the pool's threads.
constexpr Shape kShapes[] = {{37, 96}, {64, 608}, {19, 100}, {300, 576}};

class Isa : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!kernels::Q4ForceIsa(GetParam())) GTEST_SKIP() << GetParam() << " does not run here";
  }
  void TearDown() override { kernels::Q4ForceIsa(""); }
};

std::vector<float> Normal(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> g(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

std::vector<uint16_t> Halves(size_t n, std::mt19937& rng, float scale) {
  std::vector<uint16_t> v(n);
  std::normal_distribution<float> g(0.f, scale);
  for (auto& h : v) h = Fp32ToFp16(g(rng));
  return v;
}

TEST(EtQ4Ops, Registered) {
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("torchchat::q4_linear.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("torchchat::q8_linear.out"));
}

TEST_P(Isa, Q4MatchesTheCoreBitForBit) {
  std::mt19937 rng(1);
  for (const Shape s : kShapes) {
    const int nb = static_cast<int>(Q4NumBlocks(s.k));
    std::vector<uint8_t> qs(size_t(s.n) * nb * 16);
    for (auto& b : qs) b = uint8_t(rng());
    std::vector<uint16_t> scales = Halves(size_t(s.n) * 2 * nb, rng, 0.05f);
    const std::vector<float> bias = Normal(s.n, rng);
    const kernels::Q4Weight w{qs.data(), scales.data(), s.n, s.k};
    for (int m = 1; m <= 9; ++m) {
      const std::vector<float> x = Normal(size_t(m) * s.k, rng);
      std::vector<float> want(size_t(m) * s.n);
      kernels::Q4Linear(x.data(), m, w, bias.data(), want.data());
      auto xt = make_tensor_ptr({1, m, s.k}, x);
      auto qt = make_tensor_ptr({s.n, nb * 16}, qs, {}, {}, ScalarType::Byte);
      // fp16 bits as they are (the vector overload would convert the values).
      auto st = make_tensor_ptr({s.n, 2 * nb}, scales.data(), ScalarType::Half);
      auto bt = make_tensor_ptr({s.n}, bias);
      // Sized for the largest M: the kernel resizes it, as a .pte's
      // memory plan gives the upper bound.
      auto out =
          make_tensor_ptr({1, 9, s.n}, std::vector<float>(size_t(9) * s.n), {}, {},
                          ScalarType::Float, executorch::aten::TensorShapeDynamism::DYNAMIC_BOUND);
      KernelRuntimeContext ctx;
      std::optional<executorch::aten::Tensor> b(*bt);
      Q4LinearOut(ctx, *xt, *qt, *st, b, s.n, s.k, *out);
      ASSERT_EQ(ctx.failure_state(), Error::Ok);
      ASSERT_EQ(out->size(1), m);
      ASSERT_EQ(out->size(2), s.n);
      ASSERT_EQ(std::memcmp(out->const_data_ptr<float>(), want.data(), want.size() * 4), 0)
          << GetParam() << " n=" << s.n << " k=" << s.k << " m=" << m;
    }
  }
}

TEST_P(Isa, Q8MatchesTheCoreBitForBit) {
  std::mt19937 rng(2);
  for (const Shape s : kShapes) {
    const int nb = static_cast<int>(Q4NumBlocks(s.k));
    std::vector<int8_t> qs(size_t(s.n) * nb * 32);
    for (auto& b : qs) b = int8_t(rng());
    std::vector<uint16_t> scales = Halves(size_t(s.n) * nb, rng, 0.01f);
    const kernels::Q8Weight w{qs.data(), scales.data(), s.n, s.k};
    for (int m = 1; m <= 9; ++m) {
      const std::vector<float> x = Normal(size_t(m) * s.k, rng);
      std::vector<float> want(size_t(m) * s.n);
      kernels::Q8Linear(x.data(), m, w, nullptr, want.data());
      auto xt = make_tensor_ptr({m, s.k}, x);
      auto qt = make_tensor_ptr({s.n, nb * 32}, qs, {}, {}, ScalarType::Char);
      auto st = make_tensor_ptr({s.n, nb}, scales.data(), ScalarType::Half);
      auto out =
          make_tensor_ptr({9, s.n}, std::vector<float>(size_t(9) * s.n), {}, {}, ScalarType::Float,
                          executorch::aten::TensorShapeDynamism::DYNAMIC_BOUND);
      KernelRuntimeContext ctx;
      Q8LinearOut(ctx, *xt, *qt, *st, std::nullopt, s.n, s.k, *out);
      ASSERT_EQ(ctx.failure_state(), Error::Ok);
      ASSERT_EQ(std::memcmp(out->const_data_ptr<float>(), want.data(), want.size() * 4), 0)
          << GetParam() << " n=" << s.n << " k=" << s.k << " m=" << m;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryPath, Isa, ::testing::ValuesIn(kIsas));

TEST(EtQ4Ops, RefusesWrongShapesAndDtypes) {
  auto x = make_tensor_ptr({1, 64}, std::vector<float>(64));
  auto qs = make_tensor_ptr({8, 32}, std::vector<uint8_t>(8 * 32), {}, {}, ScalarType::Byte);
  std::vector<uint16_t> halves(8 * 4);
  auto scales = make_tensor_ptr({8, 4}, halves.data(), ScalarType::Half);
  auto out = make_tensor_ptr({1, 8}, std::vector<float>(8));
  {
    KernelRuntimeContext ctx;  // k does not match x
    Q4LinearOut(ctx, *x, *qs, *scales, std::nullopt, 8, 96, *out);
    EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
  }
  {
    KernelRuntimeContext ctx;  // qs for a different n
    Q4LinearOut(ctx, *x, *qs, *scales, std::nullopt, 4, 64, *out);
    EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
  }
  {
    KernelRuntimeContext ctx;  // Q4 codes given to the Q8 op
    Q8LinearOut(ctx, *x, *qs, *scales, std::nullopt, 8, 64, *out);
    EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
  }
  {
    KernelRuntimeContext ctx;
    Q4LinearOut(ctx, *x, *qs, *scales, std::nullopt, 8, 64, *out);
    EXPECT_EQ(ctx.failure_state(), Error::Ok);
  }
}

}  // namespace
}  // namespace torchchat::et_ops
