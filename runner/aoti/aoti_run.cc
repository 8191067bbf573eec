// aoti_run: generates text from an AOTInductor .pt2 package.
//
// Placeholder: generation lands with the runner issue (#6). Until then it
// checks that a package loads and says what is missing.
#include <cstdio>
#include <exception>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: aoti_run MODEL.pt2 [options]\n");
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::printf("loaded %s with libtorch %s\n", argv[1], TORCH_VERSION);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aoti_run: cannot load %s: %s\n", argv[1], e.what());
    return 1;
  }
  std::fprintf(stderr, "aoti_run: text generation is not implemented yet\n");
  return 2;
}
