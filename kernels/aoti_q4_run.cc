// Runs an AOTInductor package whose graph calls torchchat::q4_linear, in a
// C++ process: the op library is linked in (its static registrations run at
// load), which is all the package's proxy executor needs to find the op.
//
//   aoti_q4_run MODEL.pt2 INPUT OUTPUT
// INPUT and OUTPUT are float32 matrices: a text header "rows cols\n", then
// the raw little-endian data.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

bool ReadMatrix(const std::string& path, at::Tensor* out) {
  std::ifstream f(path, std::ios::binary);
  int64_t r = 0, c = 0;
  if (!(f >> r >> c) || r <= 0 || c <= 0) return false;
  f.get();
  *out = at::empty({r, c}, at::kFloat);
  f.read(reinterpret_cast<char*>(out->data_ptr<float>()), std::streamsize(r * c * 4));
  return bool(f);
}

bool WriteMatrix(const std::string& path, const at::Tensor& t) {
  const at::Tensor c = t.contiguous().to(at::kFloat).reshape({t.size(0), -1});
  std::ofstream f(path, std::ios::binary);
  f << c.size(0) << " " << c.size(1) << "\n";
  f.write(reinterpret_cast<const char*>(c.data_ptr<float>()), std::streamsize(c.numel() * 4));
  return bool(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: aoti_q4_run MODEL.pt2 INPUT OUTPUT\n");
    return 2;
  }
  try {
    at::Tensor x;
    if (!ReadMatrix(argv[2], &x)) {
      std::fprintf(stderr, "error: cannot read input matrix %s\n", argv[2]);
      return 1;
    }
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::vector<at::Tensor> out = loader.run({x});
    if (out.empty() || !WriteMatrix(argv[3], out[0])) {
      std::fprintf(stderr, "error: cannot write output %s\n", argv[3]);
      return 1;
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "error: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
  return 0;
}
