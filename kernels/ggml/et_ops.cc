// ExecuTorch kernels for torchchat::ggml_linear.out and ggml_embedding.out:
// a .pte of a GGUF keeps each tensor in the file's own format and runs the
// same kernels as the torch op (linear.h), so a .pte and a .pt2 of one GGUF
// compute the same thing. Schemas in torch_ops.cc.

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdint>
#include <optional>

#include "kernels/et_util.h"
#include "kernels/ggml/linear.h"

namespace torchchat::et_ops {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

bool CheckWeight(KernelRuntimeContext& ctx, const char* op, const Tensor& w, int64_t type,
                 int64_t rows, int64_t k) {
  const int64_t row = kernels::ggml::RowBytes(int(type), k);
  ET_KERNEL_CHECK_MSG(ctx, row > 0, InvalidArgument, false,
                      "%s: type %lld with k=%lld is not supported", op,
                      static_cast<long long>(type), static_cast<long long>(k));
  ET_KERNEL_CHECK_MSG(ctx,
                      w.scalar_type() == ScalarType::Byte && w.dim() == 2 && w.size(0) == rows &&
                          w.size(1) == row && IsContiguous(w),
                      InvalidArgument, false, "%s: w must be uint8 [%lld, %lld] (%s)", op,
                      static_cast<long long>(rows), static_cast<long long>(row),
                      kernels::ggml::TypeName(int(type)));
  return true;
}

}  // namespace

Tensor& GgmlLinearOut(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w, int64_t type,
                      int64_t n, int64_t k, const std::optional<Tensor>& bias, Tensor& out) {
  const char* op = "ggml_linear";
  if (!CheckAndResize(ctx, op, x, bias, n, k, out) || !CheckWeight(ctx, op, w, type, n, k))
    return out;
  const char* err = kernels::ggml::Linear(x.const_data_ptr<float>(), x.numel() / k,
                                          w.const_data_ptr<uint8_t>(), int(type), n, k,
                                          BiasData(bias), out.mutable_data_ptr<float>(), &kEtPool);
  ET_KERNEL_CHECK_MSG(ctx, err == nullptr, InvalidArgument, out, "%s: %s", op, err);
  return out;
}

Tensor& GgmlEmbeddingOut(KernelRuntimeContext& ctx, const Tensor& ids, const Tensor& w,
                         int64_t type, int64_t k, Tensor& out) {
  const char* op = "ggml_embedding";
  ET_KERNEL_CHECK_MSG(ctx, w.dim() == 2, InvalidArgument, out, "%s: w must be 2-D", op);
  if (!CheckWeight(ctx, op, w, type, w.size(0), k)) return out;
  ET_KERNEL_CHECK_MSG(ctx, ids.scalar_type() == ScalarType::Long && IsContiguous(ids),
                      InvalidArgument, out, "%s: ids must be contiguous int64", op);
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "%s: out must be float32", op);
  executorch::aten::SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int64_t i = 0; i < ids.dim(); ++i) sizes[i] = ids.size(i);
  sizes[ids.dim()] = static_cast<executorch::aten::SizesType>(k);
  ET_KERNEL_CHECK_MSG(ctx,
                      executorch::runtime::resize_tensor(
                          out, {sizes, static_cast<size_t>(ids.dim() + 1)}) == Error::Ok,
                      InvalidArgument, out, "%s: cannot resize the output", op);
  const int64_t* p = ids.const_data_ptr<int64_t>();
  const int64_t count = ids.numel(), rows = w.size(0);
  for (int64_t i = 0; i < count; ++i)
    ET_KERNEL_CHECK_MSG(ctx, p[i] >= 0 && p[i] < rows, InvalidArgument, out,
                        "%s: id %lld is out of range [0, %lld)", op, static_cast<long long>(p[i]),
                        static_cast<long long>(rows));
  const char* err = kernels::ggml::DequantizeRows(w.const_data_ptr<uint8_t>(), int(type), k, p,
                                                  count, out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, err == nullptr, InvalidArgument, out, "%s: %s", op, err);
  return out;
}

}  // namespace torchchat::et_ops

EXECUTORCH_LIBRARY(torchchat, "ggml_linear.out", torchchat::et_ops::GgmlLinearOut);
EXECUTORCH_LIBRARY(torchchat, "ggml_embedding.out", torchchat::et_ops::GgmlEmbeddingOut);
