// Links libtorch and ExecuTorch together: the negative case that the
// dependency-graph checks must flag for each runner.
#include <cstdio>

#include <executorch/extension/module/module.h>
#include <torch/torch.h>

int main() {
  executorch::extension::Module module("/nonexistent.pte");
  std::printf("%d\n", static_cast<int>(torch::ones({1}).item<float>()));
  return module.is_loaded() ? 1 : 0;
}
