// ExecuTorch kernels for torchchat::q4_linear.out and torchchat::q8_linear.out,
// the ops a .pte exported with linear:int4 runs for its linears (schemas in
// torch_ops.cc, so one .pte has the same op in torch and here).
//
// Why our own op and not XNNPACK: XNNPACK's 4-bit blocks are symmetric and
// take int8 activations per token; a GGUF Q4_1 block is d*q + m, which they
// cannot hold, and int8 activations cost the top-1 agreement with fp32. The
// kernel below is the q4_linear.h core the torch op runs, so a .pte and a
// .pt2 of the same GGUF compute the same thing with the same SIMD code.

#include "kernels/et_q4_ops.h"

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdint>
#include <optional>

#include "kernels/et_util.h"
#include "kernels/q4_linear.h"
#include "kernels/q8_linear.h"

namespace torchchat::et_ops {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
using kernels::Q4NumBlocks;
using kernels::Q8NumBlocks;

}  // namespace

Tensor& Q4LinearOut(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qs,
                    const Tensor& scales, const std::optional<Tensor>& bias, int64_t n, int64_t k,
                    Tensor& out) {
  if (!CheckAndResize(ctx, "q4_linear", x, bias, n, k, out)) return out;
  const int64_t nb = Q4NumBlocks(k);
  ET_KERNEL_CHECK_MSG(ctx,
                      qs.scalar_type() == ScalarType::Byte && qs.dim() == 2 && qs.size(0) == n &&
                          qs.size(1) == nb * 16 && IsContiguous(qs),
                      InvalidArgument, out, "q4_linear: qs must be uint8 [%lld, %lld]",
                      static_cast<long long>(n), static_cast<long long>(nb * 16));
  ET_KERNEL_CHECK_MSG(ctx,
                      scales.scalar_type() == ScalarType::Half && scales.dim() == 2 &&
                          scales.size(0) == n && scales.size(1) == 2 * nb && IsContiguous(scales),
                      InvalidArgument, out, "q4_linear: scales must be float16 [%lld, %lld]",
                      static_cast<long long>(n), static_cast<long long>(2 * nb));
  const kernels::Q4Weight w{qs.const_data_ptr<uint8_t>(),
                            static_cast<const uint16_t*>(scales.const_data_ptr()), n, k};
  kernels::Q4Linear(x.const_data_ptr<float>(), x.numel() / k, w, BiasData(bias),
                    out.mutable_data_ptr<float>(), &kEtPool);
  return out;
}

Tensor& Q8LinearOut(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qs,
                    const Tensor& scales, const std::optional<Tensor>& bias, int64_t n, int64_t k,
                    Tensor& out) {
  if (!CheckAndResize(ctx, "q8_linear", x, bias, n, k, out)) return out;
  const int64_t nb = Q8NumBlocks(k);
  ET_KERNEL_CHECK_MSG(ctx,
                      qs.scalar_type() == ScalarType::Char && qs.dim() == 2 && qs.size(0) == n &&
                          qs.size(1) == nb * 32 && IsContiguous(qs),
                      InvalidArgument, out, "q8_linear: qs must be int8 [%lld, %lld]",
                      static_cast<long long>(n), static_cast<long long>(nb * 32));
  ET_KERNEL_CHECK_MSG(ctx,
                      scales.scalar_type() == ScalarType::Half && scales.dim() == 2 &&
                          scales.size(0) == n && scales.size(1) == nb && IsContiguous(scales),
                      InvalidArgument, out, "q8_linear: scales must be float16 [%lld, %lld]",
                      static_cast<long long>(n), static_cast<long long>(nb));
  const kernels::Q8Weight w{qs.const_data_ptr<int8_t>(),
                            static_cast<const uint16_t*>(scales.const_data_ptr()), n, k};
  kernels::Q8Linear(x.const_data_ptr<float>(), x.numel() / k, w, BiasData(bias),
                    out.mutable_data_ptr<float>(), &kEtPool);
  return out;
}

}  // namespace torchchat::et_ops

EXECUTORCH_LIBRARY(torchchat, "q4_linear.out", torchchat::et_ops::Q4LinearOut);
EXECUTORCH_LIBRARY(torchchat, "q8_linear.out", torchchat::et_ops::Q8LinearOut);

// For Python (ctypes) and tests: the kernel path of this library's copy of
// the q4 core, which is separate from the torch op library's.
extern "C" __attribute__((visibility("default"))) const char* torchchat_et_q4_isa() {
  return torchchat::kernels::Q4Isa();
}

extern "C" __attribute__((visibility("default"))) int torchchat_et_q4_force_isa(const char* isa) {
  return torchchat::kernels::Q4ForceIsa(isa) ? 1 : 0;
}
