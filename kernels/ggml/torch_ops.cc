// torchchat::ggml_linear and torchchat::ggml_embedding as PyTorch custom ops
// (CPU), in the same library as q4_linear (libtorchchat_q4_ops.so).
//
//   ggml_linear(Tensor x, Tensor w, int type, int n, int k, Tensor? bias) -> Tensor
//   ggml_embedding(Tensor ids, Tensor w, int type, int k) -> Tensor
//
// w: uint8 [n, RowBytes(type, k)], a GGUF tensor's bytes as the file holds
// them (linear.h); x: float [..., k] (other float dtypes computed in fp32
// and cast back). ggml_embedding returns float32 [*ids.shape, k].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/Resize.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include <vector>

#include "kernels/ggml/linear.h"

namespace torchchat::kernels::ggml {
namespace {

void AtParallelFor(void*, int64_t n, int64_t grain, Q4Task fn, void* ctx) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { fn(ctx, b, e); });
}

void CheckWeight(const char* op, const at::Tensor& w, int64_t type, int64_t n, int64_t k) {
  const int64_t row = RowBytes(int(type), k);
  TORCH_CHECK(row > 0, op, ": type ", type, " (", TypeName(int(type)), ") with k=", k,
              " is not supported (an unsupported type, or k not whole blocks)");
  TORCH_CHECK(w.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2 && w.size(0) == n && w.size(1) == row,
              op, ": w must be uint8 [", n, ", ", row, "] (", TypeName(int(type)), "), got ",
              w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(w.stride(1) == 1 && w.stride(0) == row, op, ": w must be contiguous");
}

std::vector<int64_t> OutShape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

void CheckLinear(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t n, int64_t k,
                 const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(n > 0 && k > 0, "ggml_linear: n and k must be positive, got n=", n, " k=", k);
  CheckWeight("ggml_linear", w, type, n, k);
  TORCH_CHECK(x.device().is_cpu() && x.is_floating_point() && x.dim() >= 1 && x.size(-1) == k,
              "ggml_linear: x must be a CPU float tensor ending in k=", k, ", got ",
              x.scalar_type(), " ", x.sizes());
  if (bias.has_value() && bias->defined())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "ggml_linear: bias must be [", n, "], got ",
                bias->sizes());
}

void RunLinear(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t n, int64_t k,
               const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(at::kFloat).contiguous();
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  at::Tensor y = direct ? out : at::empty(out.sizes(), xf.options());
  const Q4ParallelFor pf{AtParallelFor, nullptr};
  const char* err =
      Linear(xf.data_ptr<float>(), xf.numel() / k, w.data_ptr<uint8_t>(), int(type), n, k,
             bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>(), &pf);
  TORCH_CHECK(err == nullptr, err);
  if (!direct) out.copy_(y);
}

at::Tensor& LinearOut(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t n, int64_t k,
                      const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  CheckLinear(x, w, type, n, k, bias);
  at::native::resize_output(out, OutShape(x, n));
  RunLinear(x, w, type, n, k, bias, out);
  return out;
}

void CheckEmbedding(const at::Tensor& ids, const at::Tensor& w, int64_t type, int64_t k) {
  TORCH_CHECK(w.dim() == 2, "ggml_embedding: w must be 2-D, got ", w.sizes());
  CheckWeight("ggml_embedding", w, type, w.size(0), k);
  TORCH_CHECK(ids.device().is_cpu() && !ids.is_floating_point(),
              "ggml_embedding: ids must be a CPU integer tensor, got ", ids.scalar_type());
}

void RunEmbedding(const at::Tensor& ids, const at::Tensor& w, int64_t type, int64_t k,
                  at::Tensor& out) {
  const at::Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t count = idx.numel(), rows = w.size(0);
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < rows, "ggml_embedding: id ", p[i], " is out of range [0, ",
                rows, ")");
  const char* err =
      DequantizeRows(w.data_ptr<uint8_t>(), int(type), k, p, count, out.data_ptr<float>());
  TORCH_CHECK(err == nullptr, err);
}

std::vector<int64_t> EmbeddingShape(const at::Tensor& ids, int64_t k) {
  std::vector<int64_t> s(ids.sizes().begin(), ids.sizes().end());
  s.push_back(k);
  return s;
}

at::Tensor& EmbeddingOut(const at::Tensor& ids, const at::Tensor& w, int64_t type, int64_t k,
                         at::Tensor& out) {
  CheckEmbedding(ids, w, type, k);
  TORCH_CHECK(out.scalar_type() == at::kFloat, "ggml_embedding: out must be float32");
  at::native::resize_output(out, EmbeddingShape(ids, k));
  TORCH_CHECK(out.is_contiguous(), "ggml_embedding: out must be contiguous");
  RunEmbedding(ids, w, type, k, out);
  return out;
}

}  // namespace

at::Tensor LinearOp(const at::Tensor& x, const at::Tensor& w, int64_t type, int64_t n, int64_t k,
                    const c10::optional<at::Tensor>& bias) {
  CheckLinear(x, w, type, n, k, bias);
  at::Tensor out = at::empty(OutShape(x, n), x.options());
  RunLinear(x, w, type, n, k, bias, out);
  return out;
}

at::Tensor EmbeddingOp(const at::Tensor& ids, const at::Tensor& w, int64_t type, int64_t k) {
  CheckEmbedding(ids, w, type, k);
  at::Tensor out = at::empty(EmbeddingShape(ids, k), ids.options().dtype(at::kFloat));
  RunEmbedding(ids, w, type, k, out);
  return out;
}

// The .out overloads are what ExecuTorch's to_executorch() turns each call
// into (et_ggml_ops.cc implements those).
TORCH_LIBRARY_FRAGMENT(torchchat, m) {
  m.def("ggml_linear(Tensor x, Tensor w, int type, int n, int k, Tensor? bias) -> Tensor");
  m.def(
      "ggml_linear.out(Tensor x, Tensor w, int type, int n, int k, Tensor? bias, *, "
      "Tensor(a!) out) -> Tensor(a!)");
  m.def("ggml_embedding(Tensor ids, Tensor w, int type, int k) -> Tensor");
  m.def(
      "ggml_embedding.out(Tensor ids, Tensor w, int type, int k, *, Tensor(a!) out) -> "
      "Tensor(a!)");
}

TORCH_LIBRARY_IMPL(torchchat, CPU, m) {
  m.impl("ggml_linear", &LinearOp);
  m.impl("ggml_linear.out", &LinearOut);
  m.impl("ggml_embedding", &EmbeddingOp);
  m.impl("ggml_embedding.out", &EmbeddingOut);
}

}  // namespace torchchat::kernels::ggml

// C shims for AOTInductor (see kernels/torch_ops.cc): the generated model
// calls these directly instead of boxing through the dispatcher.
extern "C" __attribute__((visibility("default"))) AOTITorchError
aoti_torch_cpu_ggml_linear(AtenTensorHandle x, AtenTensorHandle w, int64_t type, int64_t n,
                           int64_t k, AtenTensorHandle* bias, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    const c10::optional<at::Tensor> b = torch::aot_inductor::pointer_to_optional<at::Tensor>(bias);
    at::Tensor y = torchchat::kernels::ggml::LinearOp(
        *tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(w), type, n, k, b);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}

extern "C" __attribute__((visibility("default"))) AOTITorchError aoti_torch_cpu_ggml_embedding(
    AtenTensorHandle ids, AtenTensorHandle w, int64_t type, int64_t k, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    at::Tensor y = torchchat::kernels::ggml::EmbeddingOp(
        *tensor_handle_to_tensor_pointer(ids), *tensor_handle_to_tensor_pointer(w), type, k);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}

extern "C" __attribute__((visibility("default"))) const char* torchchat_ggml_isa() {
  return torchchat::kernels::ggml::Isa();
}

extern "C" __attribute__((visibility("default"))) int torchchat_ggml_force_isa(const char* isa) {
  return torchchat::kernels::ggml::ForceIsa(isa) ? 1 : 0;
}

extern "C" __attribute__((visibility("default"))) const char* torchchat_ggml_decode_x() {
  return torchchat::kernels::ggml::DecodeX();
}

extern "C" __attribute__((visibility("default"))) int torchchat_ggml_force_decode_x(const char* x) {
  return torchchat::kernels::ggml::ForceDecodeX(x) ? 1 : 0;
}
