// ExecuTorch kernels for torchchat::q4_linear.out and torchchat::q8_linear.out
// (GGUF Q4_0/Q4_1 and Q8_0 weights kept exactly; see q4_linear.h). Linking
// :et_q4_ops registers them; the declarations are for tests.
#ifndef TORCHCHAT_KERNELS_ET_Q4_OPS_H_
#define TORCHCHAT_KERNELS_ET_Q4_OPS_H_

#include <executorch/runtime/kernel/kernel_includes.h>

#include <cstdint>
#include <optional>

namespace torchchat::et_ops {

// out[..., n] = x[..., k] @ W^T (+ bias). x float32; qs uint8 [n, nb*16],
// scales float16 [n, 2*nb] (nb = ceil(k / 32)).
executorch::aten::Tensor& Q4LinearOut(executorch::runtime::KernelRuntimeContext& ctx,
                                      const executorch::aten::Tensor& x,
                                      const executorch::aten::Tensor& qs,
                                      const executorch::aten::Tensor& scales,
                                      const std::optional<executorch::aten::Tensor>& bias,
                                      int64_t n, int64_t k, executorch::aten::Tensor& out);

// The same for Q8_0: qs int8 [n, nb*32], scales float16 [n, nb].
executorch::aten::Tensor& Q8LinearOut(executorch::runtime::KernelRuntimeContext& ctx,
                                      const executorch::aten::Tensor& x,
                                      const executorch::aten::Tensor& qs,
                                      const executorch::aten::Tensor& scales,
                                      const std::optional<executorch::aten::Tensor>& bias,
                                      int64_t n, int64_t k, executorch::aten::Tensor& out);

}  // namespace torchchat::et_ops

#endif  // TORCHCHAT_KERNELS_ET_Q4_OPS_H_
