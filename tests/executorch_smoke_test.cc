// Smoke test for the prebuilt ExecuTorch runtime from the executorch wheel.
//
// Loads one or more tiny .pte programs written by tests/make_tiny_pte.py with
// executorch::extension::Module, runs "forward" and compares the result with
// the reference values in the sidecar file <pte>.expected.
//
// Program paths come from the command line (every non-gtest argument is a
// .pte path) or, if none is given, from the environment variable TINY_PTE
// (colon-separated list of paths). This file defines its own main(), so link
// it against gtest, NOT gtest_main.
//
// It also checks that the registration-only shared libraries were kept by the
// linker: the CPU operator kernels (libexecutorch_kernels_optimized.so) and the
// XNNPACK delegate (libexecutorch_backend_xnnpack.so) register themselves from
// static initializers, so if the linker dropped them (--as-needed) the
// registry lookups below fail.

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/runtime.h>

#include "gtest/gtest.h"

namespace {

using executorch::extension::make_tensor_ptr;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;

std::vector<std::string>& PtePaths() {
  static std::vector<std::string> paths;
  return paths;
}

struct RefTensor {
  std::string kind;  // "input" or "output"
  std::vector<executorch::aten::SizesType> sizes;
  std::vector<float> values;
};

// Parses the sidecar written by make_tiny_pte.py. One tensor per line:
//   <input|output> <rank> <d0> ... <v0> <v1> ...
std::vector<RefTensor> ReadExpected(const std::string& path) {
  std::vector<RefTensor> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    RefTensor t;
    int rank = 0;
    ss >> t.kind >> rank;
    size_t numel = 1;
    for (int i = 0; i < rank; ++i) {
      int d = 0;
      ss >> d;
      t.sizes.push_back(d);
      numel *= static_cast<size_t>(d);
    }
    float v;
    while (ss >> v) t.values.push_back(v);
    EXPECT_EQ(t.values.size(), numel) << "bad line in " << path << ": " << line;
    out.push_back(std::move(t));
  }
  return out;
}

TEST(ExecuTorchSmoke, KernelsAndBackendAreRegistered) {
  executorch::runtime::runtime_init();
  // From libexecutorch_kernels_optimized.so.
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("aten::add.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("aten::mul.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("aten::addmm.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("aten::permute_copy.out"));
  // From libexecutorch_backend_xnnpack.so.
  EXPECT_NE(executorch::runtime::get_backend_class("XnnpackBackend"), nullptr);
}

TEST(ExecuTorchSmoke, ForwardMatchesPython) {
  executorch::runtime::runtime_init();
  ASSERT_FALSE(PtePaths().empty()) << "no .pte given: pass paths as arguments or set TINY_PTE";

  for (const std::string& pte : PtePaths()) {
    SCOPED_TRACE(pte);
    const std::vector<RefTensor> ref = ReadExpected(pte + ".expected");
    ASSERT_FALSE(ref.empty()) << "missing or empty " << pte << ".expected";

    Module module(pte);
    ASSERT_EQ(module.load(), Error::Ok) << "cannot load " << pte;
    ASSERT_EQ(module.load_forward(), Error::Ok);

    std::vector<TensorPtr> keep_alive;
    std::vector<EValue> inputs;
    std::vector<const RefTensor*> expected_outputs;
    for (const RefTensor& t : ref) {
      if (t.kind == "input") {
        keep_alive.push_back(make_tensor_ptr(t.sizes, t.values));
        inputs.emplace_back(keep_alive.back());
      } else {
        expected_outputs.push_back(&t);
      }
    }

    auto result = module.forward(inputs);
    ASSERT_TRUE(result.ok()) << "forward failed, error " << static_cast<int>(result.error());
    const std::vector<EValue>& outputs = result.get();
    ASSERT_EQ(outputs.size(), expected_outputs.size());

    for (size_t i = 0; i < outputs.size(); ++i) {
      ASSERT_TRUE(outputs[i].isTensor());
      const auto& got = outputs[i].toTensor();
      const RefTensor& want = *expected_outputs[i];
      ASSERT_EQ(got.scalar_type(), executorch::aten::ScalarType::Float);
      ASSERT_EQ(static_cast<size_t>(got.dim()), want.sizes.size());
      for (size_t d = 0; d < want.sizes.size(); ++d) {
        EXPECT_EQ(got.size(d), want.sizes[d]);
      }
      ASSERT_EQ(static_cast<size_t>(got.numel()), want.values.size());
      const float* data = got.const_data_ptr<float>();
      for (size_t k = 0; k < want.values.size(); ++k) {
        EXPECT_NEAR(data[k], want.values[k], 1e-4f + 1e-4f * std::fabs(want.values[k]))
            << "output " << i << " element " << k;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);  // strips --gtest_* flags
  for (int i = 1; i < argc; ++i) PtePaths().push_back(argv[i]);
  if (PtePaths().empty()) {
    if (const char* env = std::getenv("TINY_PTE")) {
      std::stringstream ss(env);
      std::string p;
      while (std::getline(ss, p, ':')) {
        if (!p.empty()) PtePaths().push_back(p);
      }
    }
  }
  return RUN_ALL_TESTS();
}
