// Small helpers the ExecuTorch kernels in this folder share.
#ifndef TORCHCHAT_KERNELS_ET_UTIL_H_
#define TORCHCHAT_KERNELS_ET_UTIL_H_

#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include <cstdint>

namespace torchchat::et_ops {

// Row-major contiguous, ignoring the strides of size-1 dimensions (which
// ExecuTorch's memory planner leaves arbitrary).
inline bool IsContiguous(const executorch::aten::Tensor& t) {
  int64_t expected = 1;
  for (int64_t i = t.dim() - 1; i >= 0; --i) {
    if (t.size(i) != 1 && t.strides()[i] != expected) return false;
    expected *= t.size(i);
  }
  return true;
}

}  // namespace torchchat::et_ops

#endif  // TORCHCHAT_KERNELS_ET_UTIL_H_
