// et_run: generates text from an ExecuTorch .pte program.
//
// Placeholder: generation lands with the runner issue (#6). Until then it
// checks that a program loads and lists its methods.
#include <cstdio>

#include <executorch/extension/module/module.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: et_run MODEL.pte [options]\n");
    return 2;
  }
  executorch::extension::Module module(argv[1]);
  const auto names = module.method_names();
  if (!names.ok()) {
    std::fprintf(stderr, "et_run: cannot load %s (error 0x%x)\n", argv[1],
                 static_cast<unsigned>(names.error()));
    return 1;
  }
  for (const auto& name : *names) std::printf("method: %s\n", name.c_str());
  std::fprintf(stderr, "et_run: text generation is not implemented yet\n");
  return 2;
}
