// Smoke test for libtorch from the torch CPU wheel.
//
//  * VersionAndTensorOp: the headers match the wheel version and a small
//    tensor op runs (needs libtorch_cpu.so / libc10.so at run time).
//  * AotiPackageLoader: loads a tiny AOTInductor package (.pt2) written by
//    `tests/make_tiny_pte.py OUT.pt2 --aoti` with
//    torch::inductor::AOTIModelPackageLoader, runs it and compares with the
//    eager reference values in the sidecar file <pt2>.expected.
//
// The .pt2 path comes from the first command-line argument or, if none is
// given, from the environment variable TINY_PT2. This file defines its own
// main(), so link it against gtest, NOT gtest_main.

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "gtest/gtest.h"

namespace {

std::string& Pt2Path() {
  static std::string path;
  return path;
}

TEST(LibtorchSmoke, VersionAndTensorOp) {
  std::cout << "TORCH_VERSION=" << TORCH_VERSION << std::endl;
  EXPECT_EQ(TORCH_VERSION_MAJOR, 2);
  EXPECT_EQ(TORCH_VERSION_MINOR, 13);

  // a = [[0,1,2],[3,4,5]];  a @ a^T = [[5,14],[14,50]]
  torch::Tensor a = torch::arange(6, torch::kFloat32).reshape({2, 3});
  torch::Tensor b = torch::matmul(a, a.t());
  ASSERT_EQ(b.sizes(), (std::vector<int64_t>{2, 2}));
  torch::Tensor want = torch::tensor({5.0f, 14.0f, 14.0f, 50.0f}).reshape({2, 2});
  EXPECT_TRUE(torch::allclose(b, want)) << b;
  EXPECT_FLOAT_EQ(torch::relu(a - 2.5f).sum().item<float>(), 4.5f);
}

struct RefTensor {
  std::string kind;  // "input" or "output"
  std::vector<int64_t> sizes;
  std::vector<float> values;
};

// Same sidecar format as tests/make_tiny_pte.py writes:
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
    for (int i = 0; i < rank; ++i) {
      int64_t d = 0;
      ss >> d;
      t.sizes.push_back(d);
    }
    float v;
    while (ss >> v) t.values.push_back(v);
    out.push_back(std::move(t));
  }
  return out;
}

torch::Tensor ToTensor(const RefTensor& t) {
  return torch::tensor(t.values, torch::kFloat32).reshape(t.sizes);
}

TEST(LibtorchSmoke, AotiPackageLoader) {
  const std::string& pt2 = Pt2Path();
  ASSERT_FALSE(pt2.empty()) << "no .pt2 given: pass it as the first argument or set TINY_PT2";
  const std::vector<RefTensor> ref = ReadExpected(pt2 + ".expected");
  ASSERT_FALSE(ref.empty()) << "missing or empty " << pt2 << ".expected";

  std::vector<torch::Tensor> inputs;
  std::vector<torch::Tensor> expected;
  for (const RefTensor& t : ref) {
    (t.kind == "input" ? inputs : expected).push_back(ToTensor(t));
  }

  torch::inductor::AOTIModelPackageLoader loader(pt2);
  std::vector<torch::Tensor> outputs = loader.run(inputs);
  ASSERT_EQ(outputs.size(), expected.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(outputs[i].sizes(), expected[i].sizes());
    EXPECT_TRUE(torch::allclose(outputs[i], expected[i], /*rtol=*/1e-4,
                                /*atol=*/1e-5))
        << "output " << i << "\n got:\n"
        << outputs[i] << "\n want:\n"
        << expected[i];
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);  // strips --gtest_* flags
  if (argc > 1) {
    Pt2Path() = argv[1];
  } else if (const char* env = std::getenv("TINY_PT2")) {
    Pt2Path() = env;
  }
  return RUN_ALL_TESTS();
}
