// torchchat::q4_linear as a PyTorch custom op (CPU), built as a shared
// library that Python loads with torch.ops.load_library and a C++ process
// (e.g. one running an AOTInductor package) links or dlopen()s.
//
//   q4_linear(Tensor x, Tensor qs, Tensor scales, Tensor? bias, int n, int k) -> Tensor
//   q4_linear.out(..., *, Tensor(a!) out) -> Tensor(a!)
//
// x: float32 [..., k] (other float dtypes are computed in fp32 and cast
// back); qs: uint8 [n, nb*16]; scales: float16 [n, 2*nb] (see q4_linear.h).
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/native/Resize.h>

#include <cstdlib>
#include <memory>
#include <mutex>

#include "kernels/q4_linear.h"
#include "kernels/q8_linear.h"
#include "kernels/spin_pool.h"

namespace torchchat::kernels {
namespace {

void AtParallelFor(void*, int64_t n, int64_t grain, Q4Task fn, void* ctx) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { fn(ctx, b, e); });
}

// TORCHCHAT_Q4_POOL=spin: our own spinning pool of at::get_num_threads()
// threads instead of at::parallel_for. A decode GEMV lasts ~10-100 us; an
// OpenMP region that has to wake its threads costs a large part of that.
Q4ParallelFor PickParallelFor() {
  static std::unique_ptr<SpinPool> pool;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("TORCHCHAT_Q4_POOL");
    if (env != nullptr && std::string(env) == "spin")
      pool = std::make_unique<SpinPool>(at::get_num_threads());
  });
  if (pool) return pool->AsParallelFor();
  return Q4ParallelFor{AtParallelFor, nullptr};
}

void CheckArgs(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
               const c10::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  const int64_t nb = Q4NumBlocks(k);
  TORCH_CHECK(n > 0 && k > 0, "q4_linear: n and k must be positive, got n=", n, " k=", k);
  TORCH_CHECK(x.device().is_cpu() && qs.device().is_cpu() && scales.device().is_cpu(),
              "q4_linear: CPU tensors only");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "q4_linear: x must end in k=", k, ", got ",
              x.sizes());
  TORCH_CHECK(x.is_floating_point(), "q4_linear: x must be a float tensor, got ", x.scalar_type());
  TORCH_CHECK(
      qs.scalar_type() == at::kByte && qs.dim() == 2 && qs.size(0) == n && qs.size(1) == nb * 16,
      "q4_linear: qs must be uint8 [", n, ", ", nb * 16, "], got ", qs.scalar_type(), " ",
      qs.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.dim() == 2 && scales.size(0) == n &&
                  scales.size(1) == 2 * nb,
              "q4_linear: scales must be float16 [", n, ", ", 2 * nb, "], got ",
              scales.scalar_type(), " ", scales.sizes());
  if (bias.has_value() && bias->defined())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "q4_linear: bias must be [", n, "], got ",
                bias->sizes());
}

void Run(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
         const c10::optional<at::Tensor>& bias, int64_t n, int64_t k, at::Tensor& out) {
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor qc = qs.contiguous(), sc = scales.contiguous();
  at::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(at::kFloat).contiguous();
  const int64_t m = xf.numel() / k;
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  at::Tensor y = direct ? out : at::empty(out.sizes(), xf.options());
  const Q4Weight w{qc.data_ptr<uint8_t>(),
                   reinterpret_cast<const uint16_t*>(sc.data_ptr<at::Half>()), n, k};
  const Q4ParallelFor pf = PickParallelFor();
  Q4Linear(xf.data_ptr<float>(), m, w, bf.defined() ? bf.data_ptr<float>() : nullptr,
           y.data_ptr<float>(), &pf);
  if (!direct) out.copy_(y);
}

std::vector<int64_t> OutShape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

}  // namespace

at::Tensor Q4LinearOp(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                      const c10::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  CheckArgs(x, qs, scales, bias, n, k);
  at::Tensor out = at::empty(OutShape(x, n), x.options());
  Run(x, qs, scales, bias, n, k, out);
  return out;
}

namespace {

at::Tensor& Q4LinearOut(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                        const c10::optional<at::Tensor>& bias, int64_t n, int64_t k,
                        at::Tensor& out) {
  CheckArgs(x, qs, scales, bias, n, k);
  at::native::resize_output(out, OutShape(x, n));
  Run(x, qs, scales, bias, n, k, out);
  return out;
}

}  // namespace

namespace {

// torchchat::q8_linear: GGUF Q8_0 weights (w = d*q), qs int8 [n, nb*32],
// scales float16 [n, nb]. For the output layer / tied embedding.
void CheckQ8Args(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                 const c10::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  const int64_t nb = Q8NumBlocks(k);
  TORCH_CHECK(n > 0 && k > 0, "q8_linear: n and k must be positive, got n=", n, " k=", k);
  TORCH_CHECK(x.device().is_cpu() && qs.device().is_cpu() && scales.device().is_cpu(),
              "q8_linear: CPU tensors only");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k && x.is_floating_point(),
              "q8_linear: x must be a float tensor ending in k=", k, ", got ", x.scalar_type(), " ",
              x.sizes());
  TORCH_CHECK(
      qs.scalar_type() == at::kChar && qs.dim() == 2 && qs.size(0) == n && qs.size(1) == nb * 32,
      "q8_linear: qs must be int8 [", n, ", ", nb * 32, "], got ", qs.scalar_type(), " ",
      qs.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.dim() == 2 && scales.size(0) == n &&
                  scales.size(1) == nb,
              "q8_linear: scales must be float16 [", n, ", ", nb, "], got ", scales.scalar_type(),
              " ", scales.sizes());
  if (bias.has_value() && bias->defined())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "q8_linear: bias must be [", n, "], got ",
                bias->sizes());
}

void RunQ8(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
           const c10::optional<at::Tensor>& bias, int64_t n, int64_t k, at::Tensor& out) {
  const at::Tensor xf = x.to(at::kFloat).contiguous(), qc = qs.contiguous(),
                   sc = scales.contiguous();
  at::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(at::kFloat).contiguous();
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  at::Tensor y = direct ? out : at::empty(out.sizes(), xf.options());
  const Q8Weight w{qc.data_ptr<int8_t>(),
                   reinterpret_cast<const uint16_t*>(sc.data_ptr<at::Half>()), n, k};
  const Q4ParallelFor pf = PickParallelFor();
  Q8Linear(xf.data_ptr<float>(), xf.numel() / k, w, bf.defined() ? bf.data_ptr<float>() : nullptr,
           y.data_ptr<float>(), &pf);
  if (!direct) out.copy_(y);
}

at::Tensor& Q8LinearOut(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                        const c10::optional<at::Tensor>& bias, int64_t n, int64_t k,
                        at::Tensor& out) {
  CheckQ8Args(x, qs, scales, bias, n, k);
  at::native::resize_output(out, OutShape(x, n));
  RunQ8(x, qs, scales, bias, n, k, out);
  return out;
}

}  // namespace

at::Tensor Q8LinearOp(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                      const c10::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  CheckQ8Args(x, qs, scales, bias, n, k);
  at::Tensor out = at::empty(OutShape(x, n), x.options());
  RunQ8(x, qs, scales, bias, n, k, out);
  return out;
}

// The .out overloads are what ExecuTorch's to_executorch() turns each call
// into (its kernels, et_q4_ops.cc, implement only those).
TORCH_LIBRARY(torchchat, m) {
  m.def("q8_linear(Tensor x, Tensor qs, Tensor scales, Tensor? bias, int n, int k) -> Tensor");
  m.def("q4_linear(Tensor x, Tensor qs, Tensor scales, Tensor? bias, int n, int k) -> Tensor");
  m.def(
      "q4_linear.out(Tensor x, Tensor qs, Tensor scales, Tensor? bias, int n, int k, *, "
      "Tensor(a!) out) -> Tensor(a!)");
  m.def(
      "q8_linear.out(Tensor x, Tensor qs, Tensor scales, Tensor? bias, int n, int k, *, "
      "Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(torchchat, CPU, m) {
  m.impl("q4_linear", &Q4LinearOp);
  m.impl("q4_linear.out", &Q4LinearOut);
  m.impl("q8_linear", &Q8LinearOp);
  m.impl("q8_linear.out", &Q8LinearOut);
}

}  // namespace torchchat::kernels

// C shim for AOTInductor: with
//   torch._inductor.config.aot_inductor.custom_ops_to_c_shims =
//       {torch.ops.torchchat.q4_linear.default: [kernels.q4.C_SHIM_DECL]}
// the generated model calls this function directly instead of going through
// the proxy executor (which boxes every argument through the dispatcher on
// each call). Inductor derives the name: aoti_torch_<device>_<op name>.
extern "C" __attribute__((visibility("default"))) AOTITorchError
aoti_torch_cpu_q4_linear(AtenTensorHandle x, AtenTensorHandle qs, AtenTensorHandle scales,
                         AtenTensorHandle* bias, int64_t n, int64_t k, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    const c10::optional<at::Tensor> b = torch::aot_inductor::pointer_to_optional<at::Tensor>(bias);
    at::Tensor y = torchchat::kernels::Q4LinearOp(
        *tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(qs),
        *tensor_handle_to_tensor_pointer(scales), b, n, k);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}

extern "C" __attribute__((visibility("default"))) AOTITorchError
aoti_torch_cpu_q8_linear(AtenTensorHandle x, AtenTensorHandle qs, AtenTensorHandle scales,
                         AtenTensorHandle* bias, int64_t n, int64_t k, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    const c10::optional<at::Tensor> b = torch::aot_inductor::pointer_to_optional<at::Tensor>(bias);
    at::Tensor y = torchchat::kernels::Q8LinearOp(
        *tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(qs),
        *tensor_handle_to_tensor_pointer(scales), b, n, k);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}

// For Python (ctypes) and tests: which q4 kernel path runs, and forcing one
// ("" = the default). See q4_linear.h.
extern "C" __attribute__((visibility("default"))) const char* torchchat_q4_isa() {
  return torchchat::kernels::Q4Isa();
}

extern "C" __attribute__((visibility("default"))) int torchchat_q4_force_isa(const char* isa) {
  return torchchat::kernels::Q4ForceIsa(isa) ? 1 : 0;
}
