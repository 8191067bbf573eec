"""Checkpoint loading: GGUF, HF safetensors and Meta consolidated .pth.

Every loader returns a `Checkpoint`: a `ModelConfig` plus a state dict in
Meta names and Meta RoPE layout (what `torchchat.model` consumes), and for
GGUF the raw 4-bit blocks so a quantized linear can keep its exact values.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import torch

from torchchat.model import (
    ConfigError,
    Model,
    ModelConfig,
    build_model,
    fold_multipliers,
    interleaved_window_layers,
)

if TYPE_CHECKING:
    import gguf


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the model."""


@dataclass
class GGUFQuantized:
    """Raw blocks of one GGUF tensor (rows x bytes), kept for exact int4 use."""

    qtype: str  # "Q4_0", "Q4_1" or "Q8_0"
    blocks: np.ndarray
    shape: Tuple[int, int]


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: Dict[str, torch.Tensor]
    path: Path
    format: str  # "gguf", "hf", "meta"
    tokenizer_path: Optional[Path] = None
    chat_template: Optional[str] = None
    gguf_quantized: Dict[str, GGUFQuantized] = field(default_factory=dict)
    rope_freq_factors: Optional[torch.Tensor] = None
    bos_id: Optional[int] = None
    eos_ids: Tuple[int, ...] = ()
    add_bos: Optional[bool] = None  # for prompts without a chat template


def load_checkpoint(path: os.PathLike | str) -> Checkpoint:
    """Loads a .gguf file, an HF directory or a Meta directory/.pth."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        if p.is_file() and p.suffix == ".gguf":
            return load_gguf(p)
        d = p if p.is_dir() else p.parent
        if (d / "config.json").exists() and any(d.glob("*.safetensors")):
            return load_hf(d)
        if (d / "params.json").exists():
            return load_meta(p)
        if p.is_dir() and len(list(p.glob("*.gguf"))) == 1:
            return load_gguf(next(p.glob("*.gguf")))
    except (CheckpointError, ConfigError):
        raise
    except (KeyError, ValueError, OSError, RuntimeError, IndexError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {e}") from e
    raise CheckpointError(
        f"{p} is not a recognised checkpoint (a .gguf file, a directory with "
        "config.json + *.safetensors, or consolidated.*.pth + params.json)"
    )


# --- GGUF -------------------------------------------------------------------

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
_GGUF_ARCHS = (
    "llama",
    "qwen2",
    "qwen3",
    "granite",
    "smollm3",
    "phi3",
    "gemma2",
    "gemma3",
    "olmo2",
)
_GGUF_GEMMA = ("gemma2", "gemma3")
# Fused projections llama.cpp keeps for these (split on load).
_GGUF_FUSED = {"phi3": ("attn_qkv.weight", "ffn_up.weight")}
# llama.cpp permutes Q/K into Meta's interleaved layout for these only; qwen2
# and qwen3 keep the NEOX (HF) layout.
_GGUF_META_ROPE = ("llama", "granite", "smollm3")
# llama.cpp's smollm3 skips RoPE in every 4th layer; the GGUF does not say so.
_GGUF_NO_ROPE_STEP = {"smollm3": 4}
KEEP_4BIT = ("Q4_0", "Q4_1")
# Q8_0 blocks (a Q8_0 file's linears, a 4-bit file's unembedding and
# embedding), which run exactly (kernels.q4.Q8Linear) instead of as fp32.
KEEP_8BIT = ("Q8_0",)


def gguf_tensor_name(name: str) -> Optional[str]:
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


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_gguf(path: Path) -> Checkpoint:
    import gguf

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises bare ValueError/struct/IndexError
        size = path.stat().st_size
        # numpy's "When changing to a larger dtype..." means a tensor or
        # field runs past the end of the file.
        detail = "" if "larger dtype" in str(e) else f": {type(e).__name__}: {e}"
        raise CheckpointError(
            f"{path} is a truncated or corrupt GGUF file: its header or tensor data runs "
            f"past the end of the file ({size} bytes){detail}"
        ) from None
    arch = _field(reader, "general.architecture")
    if arch not in _GGUF_ARCHS:
        raise CheckpointError(
            f"GGUF architecture {arch!r} is not supported ({', '.join(_GGUF_ARCHS)} are)"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"GGUF {path} has no token_embd.weight")

    def a(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    n_heads = int(a("attention.head_count"))
    dim = int(a("embedding_length"))
    vocab = int(tensors["token_embd.weight"].shape[1])
    # phi3's rope.dimension_count is the rotary part of a head (Phi-4-mini).
    rope_dims = None if arch == "phi3" else a("rope.dimension_count")
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
            if arch in _GGUF_NO_ROPE_STEP and (i + 1) % _GGUF_NO_ROPE_STEP[arch] == 0
        ),
        architecture=arch,
    )
    scaling = a("rope.scaling.type")
    if scaling == "linear":
        config.rope_scaling = {"factor": float(a("rope.scaling.factor", 1.0))}
    elif scaling not in (None, "none"):
        raise CheckpointError(f"GGUF rope scaling {scaling!r} is not supported")
    rotary = a("rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        rot = int(rotary)
        if arch != "phi3" or rot <= 0 or rot % 2 or rot > head_dim:
            raise CheckpointError(
                f"GGUF {arch}.rope.dimension_count {rotary} with head size {head_dim}: "
                "partial rotary is supported for phi3 only, over an even number of dims"
            )
        config.rotary_dim = rot
    if "rope_factors_short.weight" in tensors or "rope_factors_long.weight" in tensors:
        # Phi-3.5 / Phi-4-mini LongRoPE, as llama.cpp reads it: the short
        # factors up to the original context, the long ones past it, cos
        # and sin scaled by rope.scaling.attn_factor.
        if arch != "phi3" or "rope_factors_short.weight" not in tensors:
            raise CheckpointError(
                f"GGUF {arch}: LongRoPE factors are supported for phi3 only, with "
                "rope_factors_short.weight"
            )
        rot = config.rotary_dim or head_dim
        factors = {}
        for key in ("short", "long"):
            name = f"rope_factors_{key}.weight"
            if name not in tensors:
                factors[key] = []
                continue
            f = dequantize_gguf_tensor(tensors[name]).reshape(-1)
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
    if arch == "olmo2":
        # OLMo 2: norms after attention and the MLP only, and over all of
        # q's and k's heads at once.
        if a("attention.sliding_window"):
            raise CheckpointError(
                "GGUF olmo2 with attention.sliding_window (OLMo 3) is not supported"
            )
        config.pre_norms = "blk.0.attn_norm.weight" in tensors
        config.post_norms = True
        config.qk_norm_heads = (
            config.qk_norm
            and int(tensors["blk.0.attn_q_norm.weight"].n_elements) == n_heads * head_dim
        )
    if a("attention.sliding_window"):
        config.sliding_window = int(a("attention.sliding_window"))
        if arch == "phi3":
            # Every layer's, as transformers computes Phi-3 (llama.cpp
            # turns Phi's window off).
            config.window_layers = tuple(range(config.n_layers))
    if arch in _GGUF_GEMMA:
        _gguf_gemma(config, arch, a)

    sd: Dict[str, torch.Tensor] = {}
    quantized: Dict[str, GGUFQuantized] = {}
    for name, t in tensors.items():
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        if m and m.group(2) in _GGUF_FUSED.get(arch, ()):
            w = torch.from_numpy(dequantize_gguf_tensor(t))
            for meta, piece in split_fused(f"layers.{m.group(1)}.", m.group(2), w, config).items():
                rotate = arch not in _GGUF_META_ROPE and _rotated(meta)
                sd[meta] = to_meta_rope(meta, piece, config) if rotate else piece
            continue
        meta = gguf_tensor_name(name)
        if meta is None:
            if name in (
                "rope_freqs.weight",
                "rope_factors_short.weight",
                "rope_factors_long.weight",
            ):
                continue
            raise CheckpointError(f"GGUF tensor {name!r} has no place in the model")
        arr = dequantize_gguf_tensor(t)
        w = torch.from_numpy(arr)
        qname = t.tensor_type.name
        rotate = arch not in _GGUF_META_ROPE and _rotated(meta)
        if rotate:
            w = to_meta_rope(meta, w, config)
        if qname in (*KEEP_4BIT, *KEEP_8BIT) and w.dim() == 2:
            blocks = np.asarray(t.data)
            if rotate:
                # The same row permutation moves whole rows of blocks.
                rows = torch.arange(w.shape[0]).unsqueeze(1)
                blocks = blocks[to_meta_rope(meta, rows, config).squeeze(1).numpy()]
            quantized[meta] = GGUFQuantized(qname, blocks, tuple(arr.shape))
        sd[meta] = w
    if "output.weight" not in tensors and "tok_embeddings.weight" in quantized:
        # Tied: the output projection's weights are the embedding's.
        quantized["output.weight"] = quantized["tok_embeddings.weight"]
    factors = None
    if "rope_freqs.weight" in tensors:
        factors = torch.from_numpy(dequantize_gguf_tensor(tensors["rope_freqs.weight"]))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos_ids = tuple(int(x) for x in (eos, eot) if x is not None)
    return Checkpoint(
        config=config,
        state_dict=sd,
        path=path,
        format="gguf",
        tokenizer_path=path,
        chat_template=_field(reader, "tokenizer.chat_template"),
        gguf_quantized=quantized,
        rope_freq_factors=factors,
        bos_id=None if bos is None else int(bos),
        eos_ids=tuple(dict.fromkeys(eos_ids)),
        add_bos=_field(reader, "tokenizer.ggml.add_bos_token"),
    )


def _gguf_gemma(config: ModelConfig, arch: str, a: Any) -> None:
    """Gemma 2/3 as llama.cpp reads them. Its converter stores every norm
    weight + 1, so the norms are plain; what the GGUF does not say (the
    local-layer pattern, the local RoPE base, the query scale) takes
    llama.cpp's defaults."""
    config.hidden_act = "gelu_tanh"
    config.embedding_scale = float(np.sqrt(config.dim))
    config.post_norms = True
    if arch == "gemma2":
        # Both caps always apply in llama.cpp's gemma2, 50 and 30 by default.
        config.attn_softcap = float(a("attn_logit_softcapping", 50.0))
        config.final_softcap = float(a("final_logit_softcapping", 30.0))
    else:
        config.final_softcap = float(a("final_logit_softcapping", 0.0)) or None
    # llama.cpp scales queries by 1/sqrt(dim / heads) for the 27B models
    # (46 gemma2 layers, 62 gemma3), by 1/sqrt(head_dim) otherwise.
    per_head = config.dim // config.n_heads
    if config.n_layers == {"gemma2": 46, "gemma3": 62}[arch] and per_head != config.head_dim:
        config.attn_scale = float(per_head) ** -0.5
    window = config.sliding_window
    if arch == "gemma2" and not window:
        window = config.sliding_window = 4096  # llama.cpp's default for gemma2
    if not window:
        return
    pattern = a("attention.sliding_window_pattern")
    n = config.n_layers
    if isinstance(pattern, list):
        if len(pattern) != n:
            raise CheckpointError(
                f"GGUF {arch}.attention.sliding_window_pattern has {len(pattern)} entries "
                f"for {n} layers"
            )
        config.window_layers = tuple(i for i, swa in enumerate(pattern) if swa)
    else:
        every = int(pattern if pattern is not None else (2 if arch == "gemma2" else 6))
        config.window_layers = interleaved_window_layers(n, every)
    if arch == "gemma3":
        config.local_rope_theta = float(a("rope.freq_base_swa", 10000.0))


# --- HF safetensors -----------------------------------------------------------

_HF_LAYER = {
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_norm.weight": "attention.q_norm_fn.weight",
    "self_attn.k_norm.weight": "attention.k_norm_fn.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}
_HF_TOP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


def hf_to_meta_rope(
    w: torch.Tensor, n_heads: int, head_dim: int, rotary_dim: Optional[int] = None
) -> torch.Tensor:
    """HF keeps each head's rotary halves split; Meta interleaves the pairs.
    With partial rotary only the first `rotary_dim` dims of a head rotate,
    and the rest stay in place."""
    rest = w.shape[1:]
    rot = rotary_dim or head_dim
    w = w.reshape(n_heads, head_dim, *rest)
    r = w[:, :rot].reshape(n_heads, 2, rot // 2, *rest).transpose(1, 2).reshape(n_heads, rot, *rest)
    return torch.cat([r, w[:, rot:]], dim=1).reshape(n_heads * head_dim, *rest)


_ROTATED = ("wq.weight", "wq.bias", "wk.weight", "wk.bias", "q_norm_fn.weight", "k_norm_fn.weight")


def _rotated(meta: str) -> bool:
    """Whether a weight's rows follow RoPE's pairing of dimensions."""
    return meta.endswith(_ROTATED)


def to_meta_rope(meta: str, w: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """A q/k projection, or a q/k norm (one head's worth of weights, or
    OLMo 2's all heads'), from HF's split-halves layout into Meta's
    interleaved one."""
    if meta.endswith(("q_norm_fn.weight", "k_norm_fn.weight")):
        heads = w.shape[0] // config.head_dim
        return hf_to_meta_rope(w, heads, config.head_dim, config.rotary_dim)
    heads = config.n_heads if ".wq." in meta else config.n_kv_heads
    return hf_to_meta_rope(w, heads, config.head_dim, config.rotary_dim)


def meta_to_hf_rope(
    w: torch.Tensor, n_heads: int, head_dim: int, rotary_dim: Optional[int] = None
) -> torch.Tensor:
    rest = w.shape[1:]
    rot = rotary_dim or head_dim
    w = w.reshape(n_heads, head_dim, *rest)
    r = w[:, :rot].reshape(n_heads, rot // 2, 2, *rest).transpose(1, 2).reshape(n_heads, rot, *rest)
    return torch.cat([r, w[:, rot:]], dim=1).reshape(n_heads * head_dim, *rest)


# Phi-3 fuses q/k/v into one projection and gate/up into another.
_HF_FUSED = ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight")


def split_fused(
    layer: str, part: str, w: torch.Tensor, config: ModelConfig
) -> Dict[str, torch.Tensor]:
    """Meta-named pieces of a fused projection: `part` is HF's name
    ("self_attn.qkv_proj.weight") or GGUF's ("attn_qkv.weight")."""
    if part in ("self_attn.qkv_proj.weight", "attn_qkv.weight"):
        q = config.n_heads * config.head_dim
        kv = config.n_kv_heads * config.head_dim
        if w.shape[0] != q + 2 * kv:
            raise CheckpointError(f"{layer}{part} has {w.shape[0]} rows, not q+k+v = {q + 2 * kv}")
        wq, wk, wv = w[:q], w[q : q + kv], w[q + kv :]
        return {
            f"{layer}attention.wq.weight": wq,
            f"{layer}attention.wk.weight": wk,
            f"{layer}attention.wv.weight": wv,
        }
    if w.shape[0] != 2 * config.hidden_dim:
        raise CheckpointError(f"{layer}{part} has {w.shape[0]} rows, not 2 x {config.hidden_dim}")
    return {
        f"{layer}feed_forward.w1.weight": w[: config.hidden_dim],
        f"{layer}feed_forward.w3.weight": w[config.hidden_dim :],
    }


# Gemma 2/3 name their norms after the position, not the role:
# post_attention_layernorm follows attention (Llama's precedes the MLP).
_HF_GEMMA_LAYER = {
    **_HF_LAYER,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffn_norm.weight",
}


def hf_tensor_name(name: str, post_norms: bool = False) -> Optional[str]:
    if name in _HF_TOP:
        return _HF_TOP[name]
    layer = _HF_GEMMA_LAYER if post_norms else _HF_LAYER
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in layer:
        return f"layers.{m.group(1)}.{layer[m.group(2)]}"
    return None


# Gemma 3 4B and up (Gemma3ForConditionalGeneration): the language model's
# weights under these prefixes, beside a vision tower we do not run.
_GEMMA3_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
_GEMMA3_VISION = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def _gemma3_text_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The text model's config.json: its `text_config` holds only what
    differs from Gemma3TextConfig's defaults, which transformers fills in."""
    import transformers

    text = transformers.Gemma3TextConfig(**cfg["text_config"]).to_dict()
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id"):
        if key in cfg:
            text[key] = cfg[key]
    text["model_type"] = "gemma3_text"
    return text


def _gemma3_text_name(name: str) -> Optional[str]:
    """A multimodal Gemma 3 tensor's name in the text model, or None for
    the vision tower and projector."""
    if name.startswith(_GEMMA3_VISION):
        return None
    for p in _GEMMA3_TEXT_PREFIXES:
        if name.startswith(p):
            return "model." + name[len(p) :]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model.") :]
    return name


def load_hf(d: Path) -> Checkpoint:
    from safetensors.torch import load_file

    cfg = json.loads((d / "config.json").read_text())
    multimodal = cfg.get("model_type") == "gemma3" and "text_config" in cfg
    if multimodal:
        cfg = _gemma3_text_config(cfg)
    config = ModelConfig.from_hf(cfg)
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(f.name for f in d.glob("*.safetensors"))
    missing = [f for f in files if not (d / f).exists()]
    if missing:
        raise CheckpointError(f"{d}: missing shard(s) {', '.join(missing)}")
    sd: Dict[str, torch.Tensor] = {}
    for f in files:
        for name, w in load_file(str(d / f)).items():
            if multimodal:
                name = _gemma3_text_name(name)
                if name is None:
                    continue
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
            if m and m.group(2) in _HF_FUSED:
                for meta, piece in split_fused(
                    f"layers.{m.group(1)}.", m.group(2), w, config
                ).items():
                    sd[meta] = to_meta_rope(meta, piece, config) if _rotated(meta) else piece
                continue
            meta = hf_tensor_name(name, config.post_norms)
            if meta is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                raise CheckpointError(f"HF tensor {name!r} has no place in the model")
            if _rotated(meta):
                w = to_meta_rope(meta, w, config)
            sd[meta] = w
    tok_cfg = d / "tokenizer_config.json"
    template, add_bos = None, None
    if tok_cfg.exists():
        tc = json.loads(tok_cfg.read_text())
        template, add_bos = tc.get("chat_template"), tc.get("add_bos_token")
    if template is None and (d / "chat_template.jinja").exists():
        template = (d / "chat_template.jinja").read_text()
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return Checkpoint(
        config=config,
        state_dict=sd,
        path=d,
        format="hf",
        tokenizer_path=_find_tokenizer(d),
        chat_template=template if isinstance(template, str) else None,
        bos_id=cfg.get("bos_token_id"),
        eos_ids=eos_ids,
        add_bos=add_bos,
    )


# --- Meta consolidated ----------------------------------------------------------


# Meta's Llama 3 instruct format: each turn is a role header, a blank line,
# the trimmed text and <|eot_id|>; bos opens the conversation. Meta's
# `original/` checkpoints ship no template (upstream torchchat had this
# format built in for them).
LLAMA3_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# A tiktoken vocabulary line: base64 bytes, a space, the rank.
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+\r?\n")


def _is_tiktoken(path: Optional[Path]) -> bool:
    """Llama 3's tokenizer.model is a tiktoken file; Llama 2's is a
    SentencePiece protobuf."""
    if path is None or path.suffix == ".json":
        return False
    with open(path, "rb") as f:
        return bool(_TIKTOKEN_LINE.match(f.readline(256)))


def load_meta(p: Path) -> Checkpoint:
    d = p if p.is_dir() else p.parent
    params = json.loads((d / "params.json").read_text())
    shards = [p] if p.is_file() else sorted(d.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{d} has params.json but no consolidated.*.pth")
    if len(shards) > 1:
        raise CheckpointError(
            f"{d} has {len(shards)} model-parallel shards; merge them first "
            "(only single-shard Meta checkpoints are supported)"
        )
    sd = torch.load(str(shards[0]), map_location="cpu", weights_only=True, mmap=True)
    sd = {k: v for k, v in sd.items() if k != "rope.freqs"}
    vocab = sd["tok_embeddings.weight"].shape[0]
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    config = ModelConfig.from_meta_params(params, vocab, hidden)
    tokenizer = _find_tokenizer(d)
    return Checkpoint(
        config=config,
        state_dict=sd,
        path=d,
        format="meta",
        tokenizer_path=tokenizer,
        chat_template=LLAMA3_CHAT_TEMPLATE if _is_tiktoken(tokenizer) else None,
    )


def _find_tokenizer(d: Path) -> Optional[Path]:
    for name in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model"):
        if (d / name).exists():
            return d / name
    return None


# --- model ----------------------------------------------------------------------


def load_model(
    ckpt: Checkpoint,
    dtype: torch.dtype = torch.float32,
    max_seq_length: Optional[int] = None,
    device: str = "cpu",
    full_logits: bool = False,
) -> Model:
    """Builds the model for `ckpt` and loads its weights (before quantizing)."""
    sd = dict(ckpt.state_dict)
    config = fold_multipliers(ckpt.config, sd)
    model = build_model(config, dtype, max_seq_length, "cpu", full_logits)
    try:
        model.load_weights(sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path}: {str(e).splitlines()[0]}") from e
    if ckpt.rope_freq_factors is not None:
        model.set_rope_freq_factors(ckpt.rope_freq_factors)
    return model.to(device)
