"""What differs per architecture, in one table (as llama.cpp's
src/llama-arch.cpp keeps it): the names transformers and llama.cpp give it,
and the few switches the one model definition reads. The HF, GGUF and Meta
readers and ModelConfig.from_hf look an architecture up here instead of
naming it; adding one means one entry, plus a module only where it computes
something new.

Only what the checkpoint cannot say goes here. What a config.json or a
GGUF's metadata does say (sizes, RoPE base, a window's length, soft-caps
when present) is read from it.
"""

from __future__ import annotations

from dataclasses import dataclass


class ArchitectureError(ValueError):
    """A checkpoint names an architecture the table does not hold."""


@dataclass(frozen=True)
class Architecture:
    # torchchat's name (ModelConfig.architecture), which is llama.cpp's
    # general.architecture where llama.cpp has one.
    name: str
    # transformers model_type values of the text model.
    hf_types: tuple[str, ...] = ()
    # Whether llama.cpp writes it under `name` (a Mistral GGUF says "llama").
    gguf: bool = True
    # Meta's params.json + consolidated.pth (Llama only).
    meta: bool = False
    # Gemma's block: norms scale by (1 + w) in HF's weights (a GGUF stores
    # w + 1), a GELU-tanh gate, embeddings times sqrt(dim), norms after
    # attention and the MLP too, HF's norm names by position, tied
    # embeddings by default.
    gemma: bool = False
    # OLMo 2: the norms after attention and the MLP only.
    post_norms_only: bool = False
    # RMSNorm over q and k, per head (Qwen3, Gemma 3), or over all heads
    # together (OLMo 2, in HF; a GGUF's norm shape says which).
    qk_norm: bool = False
    qk_norm_all_heads: bool = False
    # transformers' default for `attention_bias` when config.json omits it.
    qkv_bias: bool = False
    # Which layers a config.json's sliding_window applies to: "all" (Mistral
    # 7B v0.1, Phi-3), "interleaved" (Gemma's local layers), "" (ignored).
    window: str = ""
    # Gemma's default interleaving: every n-th layer global (layer_types or
    # sliding_window_pattern say otherwise when present).
    window_every: int = 0
    # config.json's use_sliding_window turns on a window this definition
    # does not compute (Qwen2's max_window_layers), so it is refused.
    refuses_use_sliding_window: bool = False
    # Gemma 3: the local layers' own RoPE base.
    local_rope: bool = False
    # Gemma 3: an image's soft tokens attend to one another both ways (the
    # other families' text models read images causally).
    bidirectional_images: bool = False
    # Phi-3: partial rotary and LongRoPE.
    phi_rope: bool = False
    # SmolLM3: every n-th layer has no RoPE (HF's config.json may list the
    # layers; llama.cpp assumes this step, the GGUF does not say).
    no_rope_every: int = 0
    # llama.cpp's converter permutes q/k into Meta's interleaved RoPE layout
    # for these; the others keep HF's (NEOX) layout and are moved on load.
    gguf_meta_rope: bool = False
    # Fused projections, split on load (q|k|v, then gate|up).
    hf_fused: tuple[str, ...] = ()
    gguf_fused: tuple[str, ...] = ()
    # llama.cpp's defaults where a GGUF is silent: Gemma 2's caps (always
    # applied) and window.
    gguf_softcaps: tuple[float, float] | None = None
    gguf_window: int | None = None
    # llama.cpp scales queries by 1/sqrt(dim / heads), not 1/sqrt(head_dim),
    # for the model with this many layers (Gemma's 27B).
    gguf_dim_query_scale_layers: int | None = None


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", hf_types=("llama",), meta=True, gguf_meta_rope=True),
    Architecture(
        "mistral",
        hf_types=("mistral",),
        gguf=False,
        window="all",
        refuses_use_sliding_window=True,
    ),
    Architecture("qwen2", hf_types=("qwen2",), qkv_bias=True, refuses_use_sliding_window=True),
    Architecture("qwen3", hf_types=("qwen3",), qk_norm=True, refuses_use_sliding_window=True),
    Architecture("granite", hf_types=("granite",), gguf_meta_rope=True),
    Architecture(
        "smollm3",
        hf_types=("smollm3",),
        no_rope_every=4,
        gguf_meta_rope=True,
        refuses_use_sliding_window=True,
    ),
    Architecture(
        "phi3",
        hf_types=("phi3",),
        window="all",
        phi_rope=True,
        hf_fused=("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"),
        gguf_fused=("attn_qkv.weight", "ffn_up.weight"),
    ),
    Architecture(
        "gemma2",
        hf_types=("gemma2",),
        gemma=True,
        window="interleaved",
        window_every=2,
        gguf_softcaps=(50.0, 30.0),
        gguf_window=4096,
        gguf_dim_query_scale_layers=46,
    ),
    Architecture(
        "gemma3",
        hf_types=("gemma3_text",),
        gemma=True,
        qk_norm=True,
        window="interleaved",
        window_every=6,
        local_rope=True,
        bidirectional_images=True,
        gguf_dim_query_scale_layers=62,
    ),
    Architecture(
        "olmo2",
        hf_types=("olmo2",),
        post_norms_only=True,
        qk_norm=True,
        qk_norm_all_heads=True,
    ),
)

_BY_NAME = {a.name: a for a in ARCHITECTURES}
_BY_HF = {t: a for a in ARCHITECTURES for t in a.hf_types}
_BY_GGUF = {a.name: a for a in ARCHITECTURES if a.gguf}

# Meta's params.json, and a config.json without a model_type, describe Llama.
DEFAULT = _BY_NAME["llama"]

HF_TYPES = tuple(_BY_HF)
GGUF_NAMES = tuple(_BY_GGUF)


def architecture(name: str) -> Architecture:
    """The entry for ModelConfig.architecture."""
    if name not in _BY_NAME:
        raise ArchitectureError(
            f"architecture {name!r} is not supported ({', '.join(_BY_NAME)} are)"
        )
    return _BY_NAME[name]


def from_hf_type(model_type: str) -> Architecture:
    """The entry for a transformers config.json's model_type."""
    if model_type not in _BY_HF:
        raise ArchitectureError(
            f"model_type {model_type!r} is not supported ({', '.join(HF_TYPES)} are)"
        )
    return _BY_HF[model_type]


def from_gguf_name(name: object) -> Architecture:
    """The entry for a GGUF's general.architecture."""
    if not isinstance(name, str) or name not in _BY_GGUF:
        raise ArchitectureError(
            f"GGUF architecture {name!r} is not supported ({', '.join(GGUF_NAMES)} are)"
        )
    return _BY_GGUF[name]
