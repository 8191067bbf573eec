"""What a checkpoint says about its network: ModelConfig, read from a
transformers config.json or Meta's params.json (a GGUF's metadata is read by
torchchat.checkpoint.gguf), with the architecture's switches from
torchchat.architectures; and the context-length and pipeline-stage rules
derived from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from torchchat.architectures import DEFAULT, Architecture, ArchitectureError, from_hf_type

# {"precision": {"dtype": ...}} accepts (upstream torchchat's aliases too).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fast16": "bf16",
    "fast": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}

# transformers model_type values from_hf reads (dense models; *_moe are


# Gemma's GELU (transformers' gelu_pytorch_tanh, llama.cpp's GELU).
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


class ConfigError(ValueError):
    """A checkpoint config this model definition cannot represent."""


@dataclass
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    head_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_context: int = 2048  # what the model was trained for
    tie_embeddings: bool = False
    qkv_bias: bool = False
    # Llama 3.1-style scaling: {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}.
    rope_scaling: dict[str, float] | None = None
    # Granite; 1.0 / None means "plain Llama".
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # Qwen3: an RMSNorm over each head's q and k, before RoPE; OLMo 2: over
    # all of q's heads together, and all of k's (qk_norm_heads).
    qk_norm: bool = False
    qk_norm_heads: bool = False
    # SmolLM3: layers (0-based) whose attention uses no RoPE at all (NoPE).
    no_rope_layers: tuple[int, ...] = ()
    # Attention over the last `sliding_window` positions only, in the
    # window_layers (below).
    sliding_window: int | None = None
    # Phi-4-mini: RoPE on the first `rotary_dim` dims of each head only
    # (None: all of them).
    rotary_dim: int | None = None
    # Phi-3.5 / Phi-4-mini LongRoPE: {"short_factor", "long_factor" (per
    # frequency divisors), "original_max_position_embeddings",
    # "attention_factor" (scales cos and sin)}.
    longrope: dict[str, Any] | None = None
    # Gemma 2/3. Norms scale by (1 + w) (transformers' weights; a GGUF
    # stores w + 1 and plain norms).
    norm_unit_offset: bool = False
    hidden_act: str = "silu"  # or "gelu_tanh": the MLP's gate activation
    # Embeddings times this in the graph (√dim), not folded into the weights:
    # the output projection shares them.
    embedding_scale: float = 1.0
    # RMSNorms after attention and after the MLP too, before each residual add.
    post_norms: bool = False
    # OLMo 2 has only those: no norm before attention or the MLP.
    pre_norms: bool = True
    # q·k scale (query_pre_attn_scalar ** -0.5); None: 1/√head_dim.
    attn_scale: float | None = None
    # tanh soft-capping of attention scores (Gemma 2) and of the logits.
    attn_softcap: float | None = None
    final_softcap: float | None = None
    # Layers that attend over the last `sliding_window` positions only:
    # Gemma 2/3's interleaved local layers; every layer of Mistral 7B v0.1
    # and Phi-3.
    window_layers: tuple[int, ...] = ()
    # Gemma 3: the window layers' own RoPE base (None: the global tables).
    local_rope_theta: float | None = None
    architecture: str = DEFAULT.name

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a transformers config.json (a model_type in
        torchchat.architectures)."""
        try:
            arch = from_hf_type(cfg["model_type"]) if "model_type" in cfg else DEFAULT
        except ArchitectureError as e:
            raise ConfigError(str(e)) from None
        gemma = arch.gemma
        act = (cfg.get("hidden_activation") if gemma else None) or cfg.get("hidden_act", "silu")
        if act not in ("silu", *GELU_TANH):
            field = "hidden_activation" if gemma else "hidden_act"
            raise ConfigError(f"{field} {act!r} is not supported (silu or gelu_pytorch_tanh are)")
        if arch.refuses_use_sliding_window and cfg.get("use_sliding_window"):
            raise ConfigError("use_sliding_window: sliding-window attention is not supported")
        if cfg.get("use_bidirectional_attention"):
            raise ConfigError("use_bidirectional_attention: only causal attention is supported")
        n_heads = cfg["num_attention_heads"]
        dim = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or dim // n_heads
        rotary_dim = None
        if arch.phi_rope:
            # Older config.json files keep it at the top level, newer ones in
            # rope_parameters.
            found = (
                cfg.get("partial_rotary_factor"),
                (cfg.get("rope_parameters") or {}).get("partial_rotary_factor"),
            )
            partial = float(next((x for x in found if x is not None and float(x) != 1.0), 1.0))
            if partial != 1.0:
                rotary_dim = int(head_dim * partial)
                if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
                    raise ConfigError(
                        f"partial_rotary_factor {partial} gives {rotary_dim} rotary dims of "
                        f"{head_dim}; an even number from 2 to {head_dim} is needed"
                    )
        # Gemma 3 keeps one rope_parameters entry per layer type.
        rope = cfg.get("rope_parameters") or {}
        local_rope = rope.get("sliding_attention") or {}
        rope = rope.get("full_attention", rope)
        longrope = _hf_longrope(cfg, rotary_dim or head_dim) if arch.phi_rope else None
        rope_scaling = None if longrope else _hf_rope_scaling(cfg.get("rope_scaling") or rope)
        theta = cfg.get("rope_theta")
        if theta is None:
            theta = rope.get("rope_theta", 10000.0)
        window = cfg.get("sliding_window") if arch.window else None
        window_layers: tuple[int, ...] = ()
        local_theta = None
        if arch.window == "all" and window:
            window_layers = tuple(range(cfg["num_hidden_layers"]))
        if arch.window == "interleaved" and window:
            window_layers = _hf_window_layers(cfg, arch)
            if arch.local_rope:
                local_theta = float(
                    local_rope.get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0
                )
        scalar = cfg.get("query_pre_attn_scalar")
        return cls(
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            vocab_size=cfg["vocab_size"],
            hidden_dim=cfg["intermediate_size"],
            head_dim=head_dim,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_context=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
            qkv_bias=bool(cfg.get("attention_bias", arch.qkv_bias)),
            rope_scaling=rope_scaling,
            embedding_multiplier=float(cfg.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(cfg.get("residual_multiplier", 1.0)),
            attention_multiplier=cfg.get("attention_multiplier"),
            logits_scaling=float(cfg.get("logits_scaling", 1.0)),
            qk_norm=arch.qk_norm,
            qk_norm_heads=arch.qk_norm_all_heads,
            no_rope_layers=_hf_no_rope_layers(cfg, arch.no_rope_every)
            if arch.no_rope_every
            else (),
            sliding_window=window,
            rotary_dim=rotary_dim,
            longrope=longrope,
            norm_unit_offset=gemma,
            hidden_act="silu" if act == "silu" else "gelu_tanh",
            embedding_scale=math.sqrt(dim) if gemma else 1.0,
            post_norms=gemma or arch.post_norms_only,
            pre_norms=not arch.post_norms_only,
            attn_scale=None if scalar in (None, head_dim) else float(scalar) ** -0.5,
            attn_softcap=_positive(cfg.get("attn_logit_softcapping")),
            final_softcap=_positive(cfg.get("final_logit_softcapping")),
            window_layers=window_layers,
            local_rope_theta=local_theta,
            architecture=arch.name,
        )

    @classmethod
    def from_meta_params(cls, p: dict[str, Any], vocab_size: int, hidden_dim: int) -> ModelConfig:
        """From Meta's params.json; the FFN width comes from the weights."""
        dim, n_heads = p["dim"], p["n_heads"]
        scaling = None
        if p.get("use_scaled_rope"):
            scaling = {
                "factor": float(p.get("rope_scale_factor", 8)),
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        return cls(
            dim=dim,
            n_layers=p["n_layers"],
            n_heads=n_heads,
            n_kv_heads=p.get("n_kv_heads") or n_heads,
            vocab_size=vocab_size,
            hidden_dim=hidden_dim,
            head_dim=dim // n_heads,
            norm_eps=p.get("norm_eps", 1e-5),
            rope_theta=float(p.get("rope_theta", 10000.0)),
            max_context=p.get("max_seq_len", 8192 if scaling else 4096),
            tie_embeddings=False,
            rope_scaling=scaling,
        )


def _positive(x: Any) -> float | None:
    return float(x) if x else None


def _hf_window_layers(cfg: dict[str, Any], arch: Architecture) -> tuple[int, ...]:
    """Gemma's local layers: `layer_types`, else its fixed interleaving
    (Gemma 2 every other layer from the first; Gemma 3 all but every
    `sliding_window_pattern`-th, default 6)."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        every = arch.window_every
        if arch.local_rope:  # Gemma 3's config.json may say; Gemma 2's is fixed
            every = int(cfg.get("sliding_window_pattern") or every)
        return interleaved_window_layers(n, every)
    if len(types) != n:
        raise ConfigError(f"layer_types has {len(types)} entries for {n} layers")
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise ConfigError(f"layer_types {sorted(unknown)} are not supported")
    return tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def interleaved_window_layers(n_layers: int, every: int) -> tuple[int, ...]:
    """Gemma's fixed interleaving: every `every`-th layer global, the rest
    local (0: all local, as llama.cpp reads a pattern of 0)."""
    return tuple(i for i in range(n_layers) if every == 0 or (i + 1) % every != 0)


def _hf_no_rope_layers(cfg: dict[str, Any], default_every: int) -> tuple[int, ...]:
    """SmolLM3's `no_rope_layers` holds a use-RoPE flag per layer; without
    it, every `no_rope_layer_interval`-th layer (default 4) skips RoPE."""
    n = cfg["num_hidden_layers"]
    flags = cfg.get("no_rope_layers")
    if flags is None:
        every = int(cfg.get("no_rope_layer_interval") or default_every)
        flags = [int((i + 1) % every != 0) for i in range(n)]
    if len(flags) != n:
        raise ConfigError(f"no_rope_layers has {len(flags)} entries for {n} layers")
    return tuple(i for i, use in enumerate(flags) if not use)


def _hf_longrope(cfg: dict[str, Any], rotary_dim: int) -> dict[str, Any] | None:
    """Phi-3.5 / Phi-4-mini's LongRoPE, as transformers computes it: the
    attention factor from `factor`, else from the ratio of the context to
    the original one."""
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rs.get("rope_type", rs.get("type")) != "longrope":
        return None
    factors = {}
    for key in ("short_factor", "long_factor"):
        f = [float(x) for x in rs.get(key) or ()]
        if len(f) != rotary_dim // 2:
            raise ConfigError(
                f"rope_scaling {key} has {len(f)} values; {rotary_dim // 2} are needed "
                f"(one per rotary frequency)"
            )
        factors[key] = f
    context = int(cfg.get("max_position_embeddings", 2048))
    original = int(
        rs.get("original_max_position_embeddings")
        or cfg.get("original_max_position_embeddings")
        or context
    )
    factor = float(rs.get("factor") or context / original)
    attention = rs.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {
        **factors,
        "original_max_position_embeddings": original,
        "attention_factor": float(attention),
    }


def _hf_rope_scaling(rs: dict[str, Any]) -> dict[str, float] | None:
    """Llama 3.x scaling, or linear (positions divided by `factor`: every
    frequency's divisor is the factor)."""
    kind = rs.get("rope_type", rs.get("type")) if rs else None
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return {"factor": float(rs["factor"])}
    if kind != "llama3":
        raise ConfigError(f"rope_scaling type {kind!r} is not supported")
    return {
        "factor": float(rs["factor"]),
        "low_freq_factor": float(rs.get("low_freq_factor", 1.0)),
        "high_freq_factor": float(rs.get("high_freq_factor", 4.0)),
        "original_max_position_embeddings": int(rs.get("original_max_position_embeddings", 8192)),
    }


# ExecuTorch's ModelArgs: its module may move between releases, so only
# torchchat.executorch_compat names it (and types it Any).


def context_length(config: ModelConfig, requested: int | None) -> int:
    """The KV cache length for a requested --max-seq-length (None: the
    default, min(model context, 2048), and within a LongRoPE model's original
    context). One rule for generate, the server, eval and export."""
    original = (config.longrope or {}).get("original_max_position_embeddings")
    if requested is None:
        n = min(config.max_context, 2048)
        return min(n, original or n)
    if requested < 2:
        raise ConfigError("--max-seq-length must be at least 2")
    if requested > config.max_context:
        raise ConfigError(
            f"--max-seq-length {requested} is larger than the model supports "
            f"({config.max_context} positions)"
        )
    # LongRoPE: the long factors serve a context past the original one, at
    # every position (as llama.cpp chooses by its context size; transformers
    # switches when the sequence itself grows past it).
    long_factor = (config.longrope or {}).get("long_factor")
    if original and requested > original and not long_factor:
        raise ConfigError(
            f"max_seq_length {requested} exceeds the model's "
            f"original_max_position_embeddings {original} and it has no LongRoPE long_factor "
            f"for longer contexts, so the context is limited to {original}"
        )
    return requested


def stage_config(config: ModelConfig, layers: range) -> ModelConfig:
    """The config that builds layers `layers` of `config` alone, numbered
    from 0: what a layer's index decides (NoPE, window layers, Gemma's
    embedding scale in the first layer) moves with it."""
    if not (0 <= layers.start < layers.stop <= config.n_layers and layers.step == 1):
        raise ConfigError(f"layers {layers.start}..{layers.stop - 1} of {config.n_layers}")

    def local(indices: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i - layers.start for i in indices if i in layers)

    return dataclasses.replace(
        config,
        n_layers=len(layers),
        no_rope_layers=local(config.no_rope_layers),
        window_layers=local(config.window_layers),
        embedding_scale=config.embedding_scale if layers.start == 0 else 1.0,
    )
