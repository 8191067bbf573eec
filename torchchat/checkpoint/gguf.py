"""GGUF files as llama.cpp writes them, read in place.

Every tensor stays the file's bytes (a view of the mmapped file) under its
Meta name; only what must move does: the q/k rows of the architectures
llama.cpp keeps in HF's RoPE layout (whole rows of blocks, so exact) and
Phi-3's fused projections (split by row ranges, which stay views).
torchchat.checkpoint.build runs them in their own formats, or dequantizes
them when a model asks for float weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchchat.architectures import (
    Architecture,
    ArchitectureError,
    architecture,
    from_gguf_name,
)
from torchchat.checkpoint.base import (
    Checkpoint,
    CheckpointError,
    GGUFTensor,
    Stage,
    in_stage,
    meta_rope_rows,
    rotated,
    split_fused,
    to_meta_rope,
)
from torchchat.checkpoint.gguf_file import GGUFFile, GGUFFormatError
from torchchat.config import ModelConfig, interleaved_window_layers

if TYPE_CHECKING:
    import gguf

_GGUF_LAYER = {
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_q.bias": "attention.wq.bias",
    "attn_k.bias": "attention.wk.bias",
    "attn_v.bias": "attention.wv.bias",
    "attn_output.weight": "attention.wo.weight",
    "attn_q_norm.weight": "attention.q_norm_fn.weight",
    "attn_k_norm.weight": "attention.k_norm_fn.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    # Gemma 2/3's norms after attention and after the MLP.
    "post_attention_norm.weight": "post_attention_norm.weight",
    "post_ffw_norm.weight": "post_ffn_norm.weight",
}
_GGUF_TOP = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}


def gguf_tensor_name(name: str) -> str | None:
    """Meta name for a GGUF tensor name, or None when it has no weight slot."""
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in _GGUF_LAYER:
        return f"layers.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"
    return None


def dequantize_gguf_tensor(t: gguf.ReaderTensor) -> np.ndarray:
    """float32 array in logical (rows, cols) shape for a gguf ReaderTensor."""
    import gguf

    data = np.asarray(t.data)
    out = gguf.quants.dequantize(data, t.tensor_type)
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    out = out.reshape(shape).astype(np.float32, copy=False)
    return out if out.flags.writeable and out.flags.c_contiguous else out.copy()


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    v = reader.fields.get(key, default)
    return v.tolist() if isinstance(v, np.ndarray) else v


def _config(path: Path, reader: GGUFFile, tensors: dict[str, GGUFTensor]) -> ModelConfig:
    """The ModelConfig a GGUF describes (llama.cpp's defaults where it is silent)."""
    try:
        arch = from_gguf_name(_field(reader, "general.architecture"))
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"GGUF {path} has no token_embd.weight")

    def a(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch.name}.{key}", default)

    n_heads = int(a("attention.head_count"))
    dim = int(a("embedding_length"))
    vocab = int(tensors["token_embd.weight"].shape[0])
    # phi3's rope.dimension_count is the rotary part of a head (Phi-4-mini).
    rope_dims = None if arch.phi_rope else a("rope.dimension_count")
    head_dim = int(a("attention.key_length", rope_dims or dim // n_heads))
    config = ModelConfig(
        dim=dim,
        n_layers=int(a("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(a("attention.head_count_kv", n_heads)),
        vocab_size=vocab,
        hidden_dim=int(a("feed_forward_length")),
        head_dim=head_dim,
        norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(a("rope.freq_base", 10000.0)),
        max_context=int(a("context_length", 2048)),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        embedding_multiplier=float(a("embedding_scale", 1.0)),
        residual_multiplier=float(a("residual_scale", 1.0)),
        attention_multiplier=(float(a("attention.scale")) if a("attention.scale") else None),
        logits_scaling=float(a("logit_scale", 1.0)),
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        no_rope_layers=tuple(
            i
            for i in range(int(a("block_count")))
            if arch.no_rope_every and (i + 1) % arch.no_rope_every == 0
        ),
        architecture=arch.name,
    )
    scaling = a("rope.scaling.type")
    if scaling == "linear":
        config.rope_scaling = {"factor": float(a("rope.scaling.factor", 1.0))}
    elif scaling not in (None, "none"):
        raise CheckpointError(f"GGUF rope scaling {scaling!r} is not supported")
    rotary = a("rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        rot = int(rotary)
        if not arch.phi_rope or rot <= 0 or rot % 2 or rot > head_dim:
            raise CheckpointError(
                f"GGUF {arch.name}.rope.dimension_count {rotary} with head size {head_dim}: "
                "partial rotary is supported for phi3 only, over an even number of dims"
            )
        config.rotary_dim = rot
    if "rope_factors_short.weight" in tensors or "rope_factors_long.weight" in tensors:
        # Phi-3.5 / Phi-4-mini LongRoPE, as llama.cpp reads it: the short
        # factors up to the original context, the long ones past it, cos
        # and sin scaled by rope.scaling.attn_factor.
        if not arch.phi_rope or "rope_factors_short.weight" not in tensors:
            raise CheckpointError(
                f"GGUF {arch.name}: LongRoPE factors are supported for phi3 only, with "
                "rope_factors_short.weight"
            )
        rot = config.rotary_dim or head_dim
        factors: dict[str, list[float]] = {}
        for key in ("short", "long"):
            name = f"rope_factors_{key}.weight"
            if name not in tensors:
                factors[key] = []
                continue
            f = tensors[name].dequantize().numpy().reshape(-1)
            if f.size != rot // 2:
                raise CheckpointError(f"GGUF {name} has {f.size} values; {rot // 2} are needed")
            factors[key] = [float(x) for x in f]
        config.longrope = {
            "short_factor": factors["short"],
            "long_factor": factors["long"],
            "original_max_position_embeddings": int(
                a("rope.scaling.original_context_length", config.max_context)
            ),
            "attention_factor": float(a("rope.scaling.attn_factor", 1.0)),
        }
    if arch.post_norms_only:
        # OLMo 2: norms after attention and the MLP only, and over all of
        # q's and k's heads at once.
        if a("attention.sliding_window"):
            raise CheckpointError(
                "GGUF olmo2 with attention.sliding_window (OLMo 3) is not supported"
            )
        config.pre_norms = "blk.0.attn_norm.weight" in tensors
        config.post_norms = True
        config.qk_norm_heads = (
            arch.qk_norm_all_heads
            and config.qk_norm
            and int(np.prod(tensors["blk.0.attn_q_norm.weight"].shape)) == n_heads * head_dim
        )
    if a("attention.sliding_window"):
        config.sliding_window = int(a("attention.sliding_window"))
        if arch.window == "all":
            # Every layer's, as transformers computes Phi-3 (llama.cpp
            # turns Phi's window off).
            config.window_layers = tuple(range(config.n_layers))
    if arch.gemma:
        _gemma(config, arch, a)
    return config


# GGUF tensors that configure RoPE rather than hold weights.
_ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight")


def _in_meta_layout(
    meta: str, t: GGUFTensor, arch: Architecture, config: ModelConfig
) -> GGUFTensor:
    """llama.cpp permutes q/k into Meta's interleaved layout for some
    architectures only; the others move here, by whole rows of blocks (1-D
    biases and norms as floats)."""
    if arch.gguf_meta_rope or not rotated(meta):
        return t
    if len(t.shape) == 2:
        return t.take_rows(meta_rope_rows(meta, t.shape[0], config))
    w = to_meta_rope(meta, t.dequantize(), config).numpy()
    return GGUFTensor("F32", w.view(np.uint8), t.shape)


def load_gguf(path: Path, stage: Stage | None = None) -> Checkpoint:
    """A GGUF's config, tokenizer facts and tensors, in place. With `stage`,
    only that pipeline stage's tensors (in_stage): no other layer's rows are
    ever moved or read."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = GGUFFile(path)
    except GGUFFormatError as e:
        size = path.stat().st_size
        past_end = "past the end" in str(e) or "unpack_from requires" in str(e)
        detail = "" if past_end else f": {e}"
        raise CheckpointError(
            f"{path} is a truncated or corrupt GGUF file: its header or tensor data runs "
            f"past the end of the file ({size} bytes){detail}"
        ) from None
    tensors = reader.tensors
    config = _config(path, reader, tensors)
    arch = architecture(config.architecture)
    layers = None if stage is None else stage(config.n_layers)
    weights: dict[str, GGUFTensor] = {}
    for name, t in tensors.items():
        if name in _ROPE_TENSORS:
            continue
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        if m and layers is not None and int(m.group(1)) not in layers:
            continue
        if m and m.group(2) in arch.gguf_fused:
            whole = t
            layer = f"layers.{m.group(1)}."
            for part, rows in split_fused(layer, m.group(2), whole.shape[0], config).items():
                weights[part] = _in_meta_layout(part, whole.take_rows(rows), arch, config)
            continue
        meta = gguf_tensor_name(name)
        if meta is None:
            raise CheckpointError(f"GGUF tensor {name!r} has no place in the model")
        if in_stage(meta, config, layers):
            weights[meta] = _in_meta_layout(meta, t, arch, config)
    if config.tie_embeddings and "tok_embeddings.weight" in weights:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    factors = None
    if "rope_freqs.weight" in tensors:
        factors = tensors["rope_freqs.weight"].dequantize()
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos_ids = tuple(int(x) for x in (eos, eot) if x is not None)
    return Checkpoint(
        config=config,
        path=path,
        format="gguf",
        gguf=weights,
        tokenizer_path=path,
        chat_template=_field(reader, "tokenizer.chat_template"),
        rope_freq_factors=factors,
        bos_id=None if bos is None else int(bos),
        eos_ids=tuple(dict.fromkeys(eos_ids)),
        add_bos=_field(reader, "tokenizer.ggml.add_bos_token"),
        layers=layers,
    )


def _gemma(config: ModelConfig, arch: Architecture, a: Any) -> None:
    """Gemma 2/3 as llama.cpp reads them. Its converter stores every norm
    weight + 1, so the norms are plain; what the GGUF does not say (the
    local-layer pattern, the local RoPE base, the query scale) takes
    llama.cpp's defaults."""
    config.hidden_act = "gelu_tanh"
    config.embedding_scale = float(np.sqrt(config.dim))
    config.post_norms = True
    if arch.gguf_softcaps:
        # Both caps always apply in llama.cpp's gemma2, 50 and 30 by default.
        attn_cap, final_cap = arch.gguf_softcaps
        config.attn_softcap = float(a("attn_logit_softcapping", attn_cap))
        config.final_softcap = float(a("final_logit_softcapping", final_cap))
    else:
        config.final_softcap = float(a("final_logit_softcapping", 0.0)) or None
    # llama.cpp scales queries by 1/sqrt(dim / heads) for the 27B models
    # (46 gemma2 layers, 62 gemma3), by 1/sqrt(head_dim) otherwise.
    per_head = config.dim // config.n_heads
    if config.n_layers == arch.gguf_dim_query_scale_layers and per_head != config.head_dim:
        config.attn_scale = float(per_head) ** -0.5
    window = config.sliding_window
    if arch.gguf_window and not window:
        window = config.sliding_window = arch.gguf_window  # llama.cpp's default
    if not window:
        return
    pattern = a("attention.sliding_window_pattern")
    n = config.n_layers
    if isinstance(pattern, list):
        if len(pattern) != n:
            raise CheckpointError(
                f"GGUF {arch.name}.attention.sliding_window_pattern has {len(pattern)} entries "
                f"for {n} layers"
            )
        config.window_layers = tuple(i for i, swa in enumerate(pattern) if swa)
    else:
        every = int(pattern if pattern is not None else arch.window_every)
        config.window_layers = interleaved_window_layers(n, every)
    if arch.local_rope:
        config.local_rope_theta = float(a("rope.freq_base_swa", 10000.0))
