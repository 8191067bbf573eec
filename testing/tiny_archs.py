"""Tiny random transformers models of each architecture we load, with the
architecture's own switches on, for parity and export tests."""

import math
import os

import gguf
import numpy as np
import torch
import transformers

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
CONFIGS = {
    "llama": transformers.LlamaConfig(**COMMON, rope_theta=10000.0),
    "qwen2": transformers.Qwen2Config(**COMMON, rope_theta=1e6),
    # head_dim 32 with hidden 64 / 4 heads: Qwen3 sets head_dim on its own.
    "qwen3": transformers.Qwen3Config(**COMMON, head_dim=32, rope_theta=1e6),
    # 4 layers: the 4th is a NoPE layer (llama.cpp's fixed step of 4).
    "smollm3": transformers.SmolLM3Config(
        **{**COMMON, "num_hidden_layers": 4},
        rope_theta=1e6,
        no_rope_layer_interval=4,
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
    ),
    # Norms after attention and the MLP only, and q/k norms over all heads.
    "olmo2": transformers.Olmo2Config(
        **COMMON, rope_theta=10000.0, pad_token_id=None, bos_token_id=0, eos_token_id=1
    ),
    # Fused qkv and gate_up projections; a window no shorter than the tests.
    "phi3": transformers.Phi3Config(
        **COMMON,
        rope_theta=10000.0,
        sliding_window=256,
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
    ),
    # Phi-4-mini's switches on the phi3 architecture: RoPE on 12 of each
    # head's 16 dims, and LongRoPE (a context twice the original, so its
    # attention factor is not 1; the tests stay within the original, and
    # so does llama.cpp, which pads a 128 context to 256).
    "phi4": transformers.Phi3Config(
        **{**COMMON, "max_position_embeddings": 512},
        sliding_window=512,
        original_max_position_embeddings=256,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "short_factor": [1.0, 1.3, 1.7, 2.2, 3.1, 4.5],
            "long_factor": [1.5, 2.0, 3.0, 4.0, 6.0, 9.0],
            "original_max_position_embeddings": 256,
        },
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
    ),
    # Gemma 2: (1 + w) norms, GeGLU, post norms, √dim embeddings, local
    # layers (0 and 2) with a window shorter than the tests' sequences, and
    # both soft-caps, set low enough to bite on small random weights.
    "gemma2": transformers.Gemma2Config(
        **{**COMMON, "tie_word_embeddings": True, "num_hidden_layers": 4},
        head_dim=16,
        sliding_window=16,
        attn_logit_softcapping=0.1,
        final_logit_softcapping=0.5,
        query_pre_attn_scalar=16,
        initializer_range=0.03,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # Gemma 3: Gemma 2's layout with (1 + w) q/k norms instead of caps,
    # five local layers to one global (its default pattern), local layers
    # with their own RoPE base and the global ones with linear scaling.
    "gemma3": transformers.Gemma3TextConfig(
        **{**COMMON, "tie_word_embeddings": True, "num_hidden_layers": 6},
        head_dim=32,
        sliding_window=16,
        query_pre_attn_scalar=32,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    ),
}
# For transformers only: llama.cpp cannot be told a query scale (it infers
# one from the model size), so the GGUF tests leave these out.
HF_VARIANTS = {
    # Mistral 7B v0.1's window over every layer (llama.cpp's llama has none).
    "mistral": transformers.MistralConfig(**COMMON, sliding_window=16, rope_theta=10000.0),
    # Phi-3 mini 4k's window over every layer (llama.cpp turns Phi's off).
    "phi3-window": transformers.Phi3Config(**{**CONFIGS["phi3"].to_dict(), "sliding_window": 16}),
    "gemma2-scaled": transformers.Gemma2Config(
        **{**CONFIGS["gemma2"].to_dict(), "query_pre_attn_scalar": 24}
    ),
}
GEMMA = ("gemma2", "gemma3_text")


def model_type(name: str) -> str:
    """The architecture (config.json's model_type, GGUF's) of a CONFIGS entry."""
    t = {**CONFIGS, **HF_VARIANTS}[name].model_type
    return "gemma3" if t == "gemma3_text" else t


def hf_model(arch: str) -> "transformers.PreTrainedModel":
    torch.manual_seed(0)
    config = {**CONFIGS, **HF_VARIANTS}[arch]
    m = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            # Norm weights start at 1 (and biases at 0), where a wrong layout
            # or a missing norm would go unnoticed.
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return m


# llama.cpp's tensor names (convert_hf_to_gguf.py) per HF name suffix.
_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    # Phi-3's fused projections, kept fused by llama.cpp.
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}
# Gemma's: its post_attention_layernorm follows attention.
_GGUF_GEMMA_LAYER = {
    **_GGUF_LAYER,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_GGUF_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def hf_greedy(
    ref: "transformers.PreTrainedModel",
    ids: torch.Tensor,
    steps: int,
    pad_token_id: int = 0,
    **inputs,
) -> list[int]:
    """transformers' own greedy continuation of `ids` [1, T]: exactly `steps`
    ids, never stopped early. The explicit mask keeps generate from reading a
    prompt id equal to the pad id as padding; `inputs` go along (pixels)."""
    with torch.inference_mode():
        out = ref.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad_token_id,
            **inputs,
        )
    return out[0, ids.shape[1] :].tolist()


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF halves -> interleaved."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# llama.cpp's converter permutes Q/K for these (LlamaModel and subclasses).
META_ROPE = ("llama", "smollm3")


def write_gguf(
    m: "transformers.PreTrainedModel", arch: str, path: "os.PathLike[str]", qtype: str
) -> "os.PathLike[str]":
    """`m` as llama.cpp's converter writes it: llama permutes Q/K into the
    interleaved layout, qwen2/qwen3 keep HF's; 2-D weights in `qtype`."""
    c = m.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = c.rope_parameters or {}
    rotary = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    if rotary == head_dim:
        w.add_key_length(head_dim)  # phi3's converter writes neither for Phi-4-mini
    w.add_rope_dimension_count(rotary)
    if arch == "phi3" or (arch == "olmo2" and getattr(c, "sliding_window", None)):
        w.add_sliding_window(c.sliding_window)  # olmo2: OLMo 3's, for a refusal test
    if rope.get("rope_type") == "longrope":
        # As convert_hf_to_gguf's Phi3MiniModel writes LongRoPE.
        original = rope["original_max_position_embeddings"]
        scale = c.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    if rotary == head_dim:
        w.add_value_length(head_dim)
    gemma = c.model_type in GEMMA
    if gemma:
        # As convert_hf_to_gguf's Gemma2Model / Gemma3Model write them.
        w.add_sliding_window(c.sliding_window)
        if c.model_type == "gemma2":
            w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        if c.final_logit_softcapping:
            w.add_final_logit_softcapping(c.final_logit_softcapping)
        local = rope.get("sliding_attention")
        if local:
            w.add_rope_freq_base_swa(local["rope_theta"])
        rope = rope.get("full_attention", rope)
        if rope.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else rope["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    layer_names = _GGUF_GEMMA_LAYER if gemma or arch == "olmo2" else _GGUF_LAYER
    for name, p in m.state_dict().items():
        arr = p.numpy().astype(np.float32)
        if gemma and name.endswith("norm.weight"):
            arr = arr + 1  # llama.cpp's converter: Gemma's (1 + w) as plain norms
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if name in _GGUF_TOP:
            gname = _GGUF_TOP[name]
        else:
            i, rest = name[len("model.layers.") :].split(".", 1)
            gname = f"blk.{i}.{layer_names[rest]}"
        if arch in META_ROPE and rest_is(name, "q_proj"):
            arr = llama_cpp_permute(arr, c.num_attention_heads)
        elif arch in META_ROPE and rest_is(name, "k_proj"):
            arr = llama_cpp_permute(arr, c.num_key_value_heads)
        if arr.ndim == 1 or qtype == "F32":
            w.add_tensor(gname, arr)
        else:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType[qtype])
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rest_is(name: str, proj: str) -> bool:
    return f"self_attn.{proj}." in name
