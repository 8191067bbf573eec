// ExecuTorch kernels for llama::update_cache.out and llama::custom_sdpa.out,
// the two ops ExecuTorch's LLM export emits with use_sdpa_with_kv_cache.
//
// Why they live here: the executorch wheel implements them only inside
// libcustom_ops_aot_lib.so, an export-time plugin that needs libtorch and
// Python, so a libtorch-free runner (et_run) could not run the .pte that
// ExecuTorch's own flow makes by default. The schemas are ExecuTorch's
// (executorch/extension/llm/custom_ops), so one .pte runs here, in
// ExecuTorch's own runners and in its Python runtime.
//
// Why they are fast: the cache is [batch, max_context, kv_heads, head_dim]
// and attention reads only the filled positions (start_pos + seq_len), where
// the portable graph attends over the whole static cache under a mask and
// copies each layer's cache every step.

#include "kernels/et_llama_ops.h"

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "kernels/et_util.h"

namespace torchchat::et_ops {
namespace {

using executorch::aten::BFloat16;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// The two inner loops of attention. On x86, target_clones picks the widest
// vector unit at load time (aarch64's baseline NEON needs no clone); omp simd
// lets the reduction vectorize without -ffast-math (the sum order changes, as
// in any SIMD dot product).
#if defined(__x86_64__)
#define TC_WIDEST_SIMD \
  __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define TC_WIDEST_SIMD
#endif

TC_WIDEST_SIMD float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TC_WIDEST_SIMD void Axpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float Dot(const float* a, const BFloat16* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * static_cast<float>(b[i]);
  return s;
}

void Axpy(float* y, float a, const BFloat16* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * static_cast<float>(x[i]);
}

struct Shape {
  int64_t batch, q_len, q_heads, kv_len, kv_heads, head_dim;
};

// Softmax(q·kᵀ·scale + mask)·v for each (batch, head, query row). Query row
// i sits at absolute position start_pos + i; with `causal` it sees keys
// [0, start_pos + i], otherwise the first `n_keys` keys under the additive
// mask row (if any). Grouped-query heads share kv head h / (q_heads/kv_heads).
template <typename T>
void Attend(const T* q, const T* k, const T* v, const float* mask, Shape s, int64_t start_pos,
            int64_t n_keys, bool causal, float scale, T* out) {
  const int64_t d = s.head_dim;
  const int64_t group = s.q_heads / s.kv_heads;
  const int64_t rows = s.batch * s.q_heads * s.q_len;
  // Keep small problems (decode) on the calling thread: the pool's
  // dispatch costs more than a few thousand multiply-adds.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n_keys * d));
  executorch::extension::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(n_keys + 2 * d));
    float* scores = scratch.data();
    float* qf = scores + n_keys;
    float* acc = qf + d;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.q_len;
      const int64_t h = (r / s.q_len) % s.q_heads;
      const int64_t b = r / (s.q_len * s.q_heads);
      const int64_t hk = h / group;
      const T* qrow = q + ((b * s.q_len + i) * s.q_heads + h) * d;
      for (int64_t x = 0; x < d; ++x) qf[x] = static_cast<float>(qrow[x]) * scale;
      const int64_t limit = causal ? std::min(start_pos + i + 1, n_keys) : n_keys;
      const T* kbase = k + (b * s.kv_len * s.kv_heads + hk) * d;
      const T* vbase = v + (b * s.kv_len * s.kv_heads + hk) * d;
      const int64_t kv_stride = s.kv_heads * d;
      float max = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < limit; ++j) {
        float sc = Dot(qf, kbase + j * kv_stride, d);
        if (mask != nullptr) sc += mask[i * s.kv_len + j];
        scores[j] = sc;
        max = std::max(max, sc);
      }
      std::fill(acc, acc + d, 0.f);
      T* orow = out + ((b * s.q_len + i) * s.q_heads + h) * d;
      if (max == -std::numeric_limits<float>::infinity()) {
        // Every key masked out: a zero row, as a fully masked SDPA gives
        // when its NaNs are cleaned up.
        for (int64_t x = 0; x < d; ++x) orow[x] = static_cast<T>(0.f);
        continue;
      }
      float sum = 0.f;
      for (int64_t j = 0; j < limit; ++j) {
        const float p = std::exp(scores[j] - max);
        sum += p;
        Axpy(acc, p, vbase + j * kv_stride, d);
      }
      const float inv = 1.f / sum;
      for (int64_t x = 0; x < d; ++x) orow[x] = static_cast<T>(acc[x] * inv);
    }
  });
}

}  // namespace

Tensor& CustomSdpaOut(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                      const int64_t start_pos, const std::optional<Tensor>& attn_mask,
                      const double /*dropout_p*/, const bool is_causal,
                      const std::optional<double> scale, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InvalidArgument, out,
                      "custom_sdpa: query, key and value must be [batch, seq, heads, dim]");
  ET_KERNEL_CHECK_MSG(ctx,
                      q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                          q.scalar_type() == out.scalar_type(),
                      InvalidArgument, out, "custom_sdpa: mixed dtypes");
  ET_KERNEL_CHECK_MSG(
      ctx, q.scalar_type() == ScalarType::Float || q.scalar_type() == ScalarType::BFloat16,
      InvalidArgument, out, "custom_sdpa: only float32 and bfloat16");
  const Shape s{q.size(0), q.size(1), q.size(2), k.size(1), k.size(2), q.size(3)};
  ET_KERNEL_CHECK_MSG(ctx,
                      k.size(0) == s.batch && v.size(0) == s.batch && v.size(1) == s.kv_len &&
                          v.size(2) == s.kv_heads && k.size(3) == s.head_dim &&
                          v.size(3) == s.head_dim,
                      InvalidArgument, out, "custom_sdpa: key/value shapes differ");
  ET_KERNEL_CHECK_MSG(ctx, s.kv_heads > 0 && s.q_heads % s.kv_heads == 0, InvalidArgument, out,
                      "custom_sdpa: %d query heads are not a multiple of %d kv heads",
                      static_cast<int>(s.q_heads), static_cast<int>(s.kv_heads));
  ET_KERNEL_CHECK_MSG(ctx, IsContiguous(q) && IsContiguous(k) && IsContiguous(v), InvalidArgument,
                      out, "custom_sdpa: inputs must be contiguous");
  const float* mask = nullptr;
  int64_t n_keys = std::min(start_pos + s.q_len, s.kv_len);
  if (attn_mask.has_value()) {
    const Tensor& m = *attn_mask;
    ET_KERNEL_CHECK_MSG(ctx, !is_causal, InvalidArgument, out,
                        "custom_sdpa: give either a mask or is_causal");
    ET_KERNEL_CHECK_MSG(ctx,
                        m.scalar_type() == ScalarType::Float && m.dim() == 2 &&
                            m.size(0) == s.q_len && m.size(1) == s.kv_len && IsContiguous(m),
                        InvalidArgument, out,
                        "custom_sdpa: the mask must be float32 [seq, kv_len]");
    mask = m.const_data_ptr<float>();
    n_keys = s.kv_len;
  } else {
    ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + s.q_len <= s.kv_len, InvalidArgument,
                        out, "custom_sdpa: positions %d..%d exceed the cache (%d)",
                        static_cast<int>(start_pos), static_cast<int>(start_pos + s.q_len),
                        static_cast<int>(s.kv_len));
  }
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok,
                      InvalidArgument, out, "custom_sdpa: cannot resize the output");
  const float sc = scale.has_value() ? static_cast<float>(*scale)
                                     : 1.f / std::sqrt(static_cast<float>(s.head_dim));
  if (q.scalar_type() == ScalarType::Float) {
    Attend(q.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(), mask, s,
           start_pos, n_keys, is_causal, sc, out.mutable_data_ptr<float>());
  } else {
    Attend(q.const_data_ptr<BFloat16>(), k.const_data_ptr<BFloat16>(), v.const_data_ptr<BFloat16>(),
           mask, s, start_pos, n_keys, is_causal, sc, out.mutable_data_ptr<BFloat16>());
  }
  return out;
}

// Writes value [batch, seq, heads, dim] into cache [batch, max_context,
// heads, dim] at start_pos, in place. `out` is a placeholder that the
// schema requires (ExecuTorch's meta kernel makes it a 1-element tensor).
Tensor& UpdateCacheOut(KernelRuntimeContext& ctx, const Tensor& value, Tensor& cache,
                       const int64_t start_pos, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, value.dim() == 4 && cache.dim() == 4, InvalidArgument, out,
                      "update_cache: value and cache must be 4-D");
  ET_KERNEL_CHECK_MSG(ctx, value.scalar_type() == cache.scalar_type(), InvalidArgument, out,
                      "update_cache: value and cache dtypes differ");
  ET_KERNEL_CHECK_MSG(ctx,
                      value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                          value.size(3) == cache.size(3),
                      InvalidArgument, out, "update_cache: value and cache shapes differ");
  const int64_t seq = value.size(1);
  const int64_t max_context = cache.size(1);
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + seq <= max_context, InvalidArgument, out,
                      "update_cache: positions %d..%d exceed the cache (%d)",
                      static_cast<int>(start_pos), static_cast<int>(start_pos + seq),
                      static_cast<int>(max_context));
  ET_KERNEL_CHECK_MSG(ctx, IsContiguous(value) && IsContiguous(cache), InvalidArgument, out,
                      "update_cache: tensors must be contiguous");
  const size_t row = static_cast<size_t>(value.size(2) * value.size(3) * value.element_size());
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  auto* dst = static_cast<char*>(cache.mutable_data_ptr());
  for (int64_t b = 0; b < value.size(0); ++b) {
    std::memcpy(dst + (b * max_context + start_pos) * row, src + b * seq * row, seq * row);
  }
  return out;
}

}  // namespace torchchat::et_ops

EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", torchchat::et_ops::CustomSdpaOut);
EXECUTORCH_LIBRARY(llama, "update_cache.out", torchchat::et_ops::UpdateCacheOut);
