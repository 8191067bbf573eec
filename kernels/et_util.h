// What the ExecuTorch kernels here and in ggml/ share: the thread pool, and
// the checks every linear op makes of x, the bias and the output.
#ifndef TORCHCHAT_KERNELS_ET_UTIL_H_
#define TORCHCHAT_KERNELS_ET_UTIL_H_

#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdint>
#include <optional>

#include "kernels/parallel_for.h"

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

// ExecuTorch's shared thread pool (the one XNNPACK uses, so the linears and
// the delegated ops between them run on the same threads).
inline void EtParallelFor(void*, int64_t n, int64_t grain, kernels::Q4Task fn, void* ctx) {
  executorch::extension::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { fn(ctx, b, e); });
}

inline constexpr kernels::Q4ParallelFor kEtPool{EtParallelFor, nullptr};

// The checks every linear op shares: x float32 [..., k], an optional float32 bias
// [n], and `out` resized to [..., n]. Returns false after failing the
// context with a message naming the op.
inline bool CheckAndResize(executorch::runtime::KernelRuntimeContext& ctx, const char* op,
                           const executorch::aten::Tensor& x,
                           const std::optional<executorch::aten::Tensor>& bias, int64_t n,
                           int64_t k, executorch::aten::Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, n > 0 && k > 0, InvalidArgument, false,
                      "%s: n and k must be positive, got n=%lld k=%lld", op,
                      static_cast<long long>(n), static_cast<long long>(k));
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && x.size(x.dim() - 1) == k, InvalidArgument, false,
                      "%s: x must end in k=%lld", op, static_cast<long long>(k));
  ET_KERNEL_CHECK_MSG(ctx,
                      x.scalar_type() == executorch::aten::ScalarType::Float &&
                          out.scalar_type() == executorch::aten::ScalarType::Float,
                      InvalidArgument, false,
                      "%s: x and out must be float32 (export the .pte in fp32)", op);
  ET_KERNEL_CHECK_MSG(ctx, IsContiguous(x), InvalidArgument, false, "%s: x must be contiguous", op);
  if (bias.has_value()) {
    ET_KERNEL_CHECK_MSG(ctx,
                        bias->scalar_type() == executorch::aten::ScalarType::Float &&
                            bias->dim() == 1 && bias->size(0) == n,
                        InvalidArgument, false, "%s: bias must be float32 [%lld]", op,
                        static_cast<long long>(n));
  }
  executorch::aten::SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int64_t i = 0; i < x.dim(); ++i) sizes[i] = x.size(i);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(n);
  ET_KERNEL_CHECK_MSG(
      ctx,
      executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())}) ==
          executorch::runtime::Error::Ok,
      InvalidArgument, false, "%s: cannot resize the output", op);
  return true;
}

inline const float* BiasData(const std::optional<executorch::aten::Tensor>& bias) {
  return bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
}

}  // namespace torchchat::et_ops

#endif  // TORCHCHAT_KERNELS_ET_UTIL_H_
