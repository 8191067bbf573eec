// ExecuTorch kernels for ExecuTorch's llama::custom_sdpa.out and
// llama::update_cache.out (schemas in executorch/extension/llm/custom_ops).
// Linking :et_llama_ops registers them; the declarations are for tests.
#ifndef TORCHCHAT_KERNELS_ET_LLAMA_OPS_H_
#define TORCHCHAT_KERNELS_ET_LLAMA_OPS_H_

#include <executorch/runtime/kernel/kernel_includes.h>

#include <cstdint>
#include <optional>

namespace torchchat::et_ops {

// Scaled dot-product attention over a [batch, seq, heads, dim] cache.
// query [B, S, Hq, D]; key/value [B, max_context, Hkv, D] with Hq % Hkv == 0.
// is_causal: query row i is at position start_pos + i and sees keys up to
// it. attn_mask (float [S, max_context], additive) instead of is_causal.
executorch::aten::Tensor& CustomSdpaOut(executorch::runtime::KernelRuntimeContext& ctx,
                                        const executorch::aten::Tensor& q,
                                        const executorch::aten::Tensor& k,
                                        const executorch::aten::Tensor& v, int64_t start_pos,
                                        const std::optional<executorch::aten::Tensor>& attn_mask,
                                        double dropout_p, bool is_causal,
                                        std::optional<double> scale, executorch::aten::Tensor& out);

// cache[:, start_pos : start_pos + S] = value, in place.
executorch::aten::Tensor& UpdateCacheOut(executorch::runtime::KernelRuntimeContext& ctx,
                                         const executorch::aten::Tensor& value,
                                         executorch::aten::Tensor& cache, int64_t start_pos,
                                         executorch::aten::Tensor& out);

}  // namespace torchchat::et_ops

#endif  // TORCHCHAT_KERNELS_ET_LLAMA_OPS_H_
