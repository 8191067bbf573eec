"""The one model definition: eager generation, AOTI and ExecuTorch export.

The network is ExecuTorch's `examples/models/llama` Transformer (static KV
cache, Meta RoPE layout, exportable). This module only translates checkpoint
configs into its `ModelArgs`, wraps it with a fixed
`forward(tokens[1, T], input_pos[T]) -> logits` signature, and folds the few
Llama-family extras that Transformer does not model (Granite's multipliers,
GGUF's per-frequency RoPE factors) into weights and buffers, so the exported
graph stays the plain Llama graph. What cannot be folded (Gemma's post
norms, GELU, windows and soft-caps) is added on ExecuTorch's own modules,
with their weight names (Block, AttentionRule, LayerRope).

Weights use Meta's names (`layers.N.attention.wq.weight`, ...) and Meta's
RoPE layout (interleaved pairs); checkpoint loaders convert to that.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# Compute dtypes by canonical name, and every name --dtype or --quantize's
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
# other model_types and are refused).
HF_ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "granite",
    "smollm3",
    "phi3",
    "gemma2",
    "gemma3_text",
    "olmo2",
)
GEMMA = ("gemma2", "gemma3_text")
# Gemma's GELU (transformers' gelu_pytorch_tanh, llama.cpp's GELU).
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


# Images in a forward: (offset in its tokens, soft-token embeddings [n, dim]).
Images = Sequence[tuple[int, Tensor]]


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
    architecture: str = "llama"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a transformers config.json (HF_ARCHITECTURES)."""
        arch = cfg.get("model_type", "llama")
        if arch not in HF_ARCHITECTURES:
            raise ConfigError(
                f"model_type {arch!r} is not supported ({', '.join(HF_ARCHITECTURES)} are)"
            )
        gemma = arch in GEMMA
        act = (cfg.get("hidden_activation") if gemma else None) or cfg.get("hidden_act", "silu")
        if act not in ("silu", *GELU_TANH):
            field = "hidden_activation" if gemma else "hidden_act"
            raise ConfigError(f"{field} {act!r} is not supported (silu or gelu_pytorch_tanh are)")
        if arch in ("mistral", "qwen2", "qwen3", "smollm3") and cfg.get("use_sliding_window"):
            raise ConfigError("use_sliding_window: sliding-window attention is not supported")
        if cfg.get("use_bidirectional_attention"):
            raise ConfigError("use_bidirectional_attention: only causal attention is supported")
        n_heads = cfg["num_attention_heads"]
        dim = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or dim // n_heads
        rotary_dim = None
        if arch == "phi3":
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
        longrope = _hf_longrope(cfg, rotary_dim or head_dim) if arch == "phi3" else None
        rope_scaling = None if longrope else _hf_rope_scaling(cfg.get("rope_scaling") or rope)
        theta = cfg.get("rope_theta")
        if theta is None:
            theta = rope.get("rope_theta", 10000.0)
        window = cfg.get("sliding_window") if arch in ("phi3", "mistral", *GEMMA) else None
        window_layers: tuple[int, ...] = ()
        local_theta = None
        if arch in ("mistral", "phi3") and window:
            window_layers = tuple(range(cfg["num_hidden_layers"]))
        if gemma and window:
            window_layers = _hf_window_layers(cfg, arch)
            if arch == "gemma3_text":
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
            qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            rope_scaling=rope_scaling,
            embedding_multiplier=float(cfg.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(cfg.get("residual_multiplier", 1.0)),
            attention_multiplier=cfg.get("attention_multiplier"),
            logits_scaling=float(cfg.get("logits_scaling", 1.0)),
            qk_norm=arch in ("qwen3", "gemma3_text", "olmo2"),
            qk_norm_heads=arch == "olmo2",
            no_rope_layers=_hf_no_rope_layers(cfg) if arch == "smollm3" else (),
            sliding_window=window,
            rotary_dim=rotary_dim,
            longrope=longrope,
            norm_unit_offset=gemma,
            hidden_act="silu" if act == "silu" else "gelu_tanh",
            embedding_scale=math.sqrt(dim) if gemma else 1.0,
            post_norms=gemma or arch == "olmo2",
            pre_norms=arch != "olmo2",
            attn_scale=None if scalar in (None, head_dim) else float(scalar) ** -0.5,
            attn_softcap=_positive(cfg.get("attn_logit_softcapping")),
            final_softcap=_positive(cfg.get("final_logit_softcapping")),
            window_layers=window_layers,
            local_rope_theta=local_theta,
            architecture="gemma3" if arch == "gemma3_text" else arch,
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


def _hf_window_layers(cfg: dict[str, Any], arch: str) -> tuple[int, ...]:
    """Gemma's local layers: `layer_types`, else its fixed interleaving
    (Gemma 2 every other layer from the first; Gemma 3 all but every
    `sliding_window_pattern`-th, default 6)."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        every = 2 if arch == "gemma2" else int(cfg.get("sliding_window_pattern") or 6)
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


def _hf_no_rope_layers(cfg: dict[str, Any]) -> tuple[int, ...]:
    """SmolLM3's `no_rope_layers` holds a use-RoPE flag per layer; without
    it, every `no_rope_layer_interval`-th layer (default 4) skips RoPE."""
    n = cfg["num_hidden_layers"]
    flags = cfg.get("no_rope_layers")
    if flags is None:
        every = int(cfg.get("no_rope_layer_interval") or 4)
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
def model_args(config: ModelConfig, max_seq_length: int, full_logits: bool = False) -> Any:
    """ExecuTorch ModelArgs for `config` with a static KV cache."""
    from torchchat import executorch_compat as et

    return et.model_args(
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        vocab_size=config.vocab_size,
        hidden_dim=config.hidden_dim,
        head_dim=config.head_dim,
        norm_eps=config.norm_eps,
        rope_freq_base=config.rope_theta,
        max_batch_size=1,
        max_seq_len=max_seq_length,
        max_context_len=max_seq_length,
        attention_qkv_bias=config.qkv_bias,
        use_kv_cache=True,
        enable_dynamic_shape=False,
        generate_full_logits=full_logits,
        # Qwen3 normalizes q and k per head, then rotates them (as HF does).
        use_qk_norm=config.qk_norm,
        qk_norm_before_rope=config.qk_norm,
        rms_norm_add_unit_offset=config.norm_unit_offset,
    )


class Model(nn.Module):
    """`forward(tokens[1, T], input_pos[T]) -> logits`.

    Logits are [1, vocab] for the last position, or [1, T, vocab] when built
    with full_logits. The KV cache lives in buffers; positions index it
    directly, so a new conversation simply starts again at position 0.
    """

    # ExecuTorch's Transformer ships no types, and read through nn.Module's
    # __getattr__ each of its submodules would be `Tensor | Module`.
    transformer: Any

    def __init__(self, config: ModelConfig, transformer: nn.Module, max_seq_length: int):
        super().__init__()
        self.config = config
        self.max_seq_length = max_seq_length
        self.transformer = transformer
        # The layers it holds: all of them, or one pipeline stage's.
        self.layers = range(config.n_layers)

    def forward(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, images: Images = ()
    ) -> torch.Tensor:
        if not images:
            return self.transformer(tokens, {"input_pos": input_pos})
        with self.image_blocks(input_pos, images):
            return self.transformer(None, {"input_pos": input_pos}, self.embed(tokens, images))

    def embed(self, tokens: torch.Tensor, images: Images) -> torch.Tensor:
        """The first layer's input, [1, T, dim]: token embeddings, with each
        image's soft-token embeddings at its offset in `tokens`. Gemma's
        first block scales its input by sqrt(dim), which transformers does to
        token embeddings only, so the images' are divided by it here."""
        vocab = self.config.vocab_size
        t = self.transformer
        h = t.tok_embeddings(torch.where(tokens < vocab, tokens, torch.zeros_like(tokens)))
        h = h.clone()
        for offset, e in images:
            scale = torch.tensor(self.config.embedding_scale, dtype=h.dtype)
            h[0, offset : offset + e.shape[0]] = e.to(h.dtype) / scale
        return h

    @contextlib.contextmanager
    def image_blocks(self, input_pos: torch.Tensor, images: Images) -> Iterator[None]:
        """Each image's soft tokens attend to one another in both directions
        (transformers' Gemma 3 mask) while this forward runs: the causal
        masks open above the diagonal over the image's positions, which
        this forward writes to the cache before it attends. Other families'
        text models (SmolVLM's Llama) read images causally."""
        if self.config.architecture != "gemma3":
            yield
            return
        saved = []
        try:
            for offset, e in images:
                a = int(input_pos[offset])
                b = a + e.shape[0]
                upper = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)
                for layer in self.transformer.layers:
                    mask = layer.attention.mask
                    saved.append((mask, a, b, mask[a:b, a:b].clone()))
                    mask[a:b, a:b] |= upper.to(mask.device)
            yield
        finally:
            for mask, a, b, old in reversed(saved):
                mask[a:b, a:b] = old

    def forward_all(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The same forward with every position's logits, [T, vocab]
        (speculative decoding verifies a draft with it): ExecuTorch's
        Transformer keeps the positions `last_valid_token_pos` names."""
        every = torch.arange(tokens.shape[1], device=tokens.device)
        logits = self.transformer(tokens, {"input_pos": input_pos, "last_valid_token_pos": every})
        return logits.reshape(tokens.shape[1], -1)

    def reset_cache(self) -> None:
        for name, buf in self.named_buffers():
            if name.endswith(("k_cache", "v_cache")):
                buf.zero_()

    def set_rope_freq_factors(
        self, factors: torch.Tensor, rotary_dim: int | None = None, scale: float = 1.0
    ) -> None:
        """RoPE tables with each frequency divided by its factor (GGUF's
        rope_freqs for Llama 3.1 scaling, LongRoPE's short factors, linear
        scaling), over the first `rotary_dim` dims of each head (partial
        rotary: the pairs beyond get cos 1, sin 0, so they pass through), cos
        and sin scaled by `scale` (LongRoPE's attention factor). Only the
        global layers' tables: Gemma 3's local ones stay unscaled."""
        rope = self.transformer.rope
        hd = self.config.head_dim
        rot = rotary_dim or hd
        freqs = _inv_freqs(self.config.rope_theta, rot) / factors.float().reshape(-1)
        t = torch.arange(rope.freqs_cos.shape[0], dtype=torch.float32)
        angles = torch.outer(t, freqs)
        cos = torch.ones(len(t), hd // 2)
        sin = torch.zeros(len(t), hd // 2)
        cos[:, : rot // 2] = torch.cos(angles) * scale
        sin[:, : rot // 2] = torch.sin(angles) * scale
        rope.freqs_cos[:, : hd // 2] = cos
        rope.freqs_sin[:, : hd // 2] = sin

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads Meta-named weights; the KV cache stays as built."""
        sd = dict(state_dict)
        # A last pipeline stage has the output but not the embedding it shares.
        tied = self.config.tie_embeddings and self.transformer.tok_embeddings is not None
        if tied:
            sd.pop("output.weight", None)
        sd = {f"transformer.{k}": v for k, v in sd.items()}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith(("k_cache", "v_cache"))]
        if tied:
            missing = [k for k in missing if k != "transformer.output.weight"]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            t = self.transformer
            if isinstance(t.output, nn.Linear) and isinstance(t.tok_embeddings, nn.Embedding):
                t.output.weight = t.tok_embeddings.weight


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
    if original and requested > original and not config.longrope.get("long_factor"):
        raise ConfigError(
            f"max_seq_length {requested} exceeds the model's "
            f"original_max_position_embeddings {original} and it has no LongRoPE long_factor "
            f"for longer contexts, so the context is limited to {original}"
        )
    return requested


def build_model(
    config: ModelConfig,
    dtype: torch.dtype = torch.float32,
    max_seq_length: int | None = None,
    device: str = "cpu",
    full_logits: bool = False,
    meta_weights: bool = False,
    layers: range | None = None,
) -> Model:
    """An un-initialised model for `config` with a zero-filled cache. With
    `meta_weights` its parameters are on the meta device (no memory), for a
    caller that installs weights it already holds (a GGUF read in place);
    buffers (cache, masks, RoPE tables) are real either way.

    `layers` builds one pipeline stage (see `stage_config`): only those
    layers and their caches, the embedding only in the first stage, the
    final norm and output only in the last; any other stage returns every
    position's hidden state."""
    from torchchat import executorch_compat as et

    whole = config
    if layers is not None:
        config = stage_config(config, layers)
    max_seq_length = context_length(config, max_seq_length)
    original = (config.longrope or {}).get("original_max_position_embeddings")
    long_rope = bool(original and max_seq_length > original)
    args = model_args(config, max_seq_length, full_logits)
    with torch.device("meta" if meta_weights else "cpu"):
        transformer = et.construct_transformer(args)
    if meta_weights:
        _real_rope(transformer, args)
    with torch.device("cpu"):
        transformer = _gemma_extras(transformer, config)
    model = Model(config, transformer, max_seq_length)
    model.to(dtype=dtype)
    # RoPE tables stay fp32: bf16 angles drift by whole radians at long range.
    rope = transformer.rope
    rope.freqs_cos = rope.freqs_cos.float()
    rope.freqs_sin = rope.freqs_sin.float()
    for i in config.no_rope_layers:
        # ExecuTorch's ModelArgs has no_rope_layer_interval, but its attention
        # does not read it: such a layer gets a rotation that does nothing.
        transformer.layers[i].attention.rope = NoRope()
    if config.local_rope_theta is not None and config.window_layers:
        _local_rope_tables(transformer, config)
    if config.rope_scaling:
        # ExecuTorch's own Llama 3 scaling hard-codes low_freq_factor 1 and an
        # 8192 original context; the config's values go in as GGUF's
        # per-frequency divisors instead.
        model.set_rope_freq_factors(rope_scaling_factors(config))
    elif config.longrope or config.rotary_dim:
        # ExecuTorch has both only on its HF-layout RoPE (use_hf_rope); the
        # same tables on its Meta-layout RoPE keep one weight layout for
        # every architecture and loader.
        rot = config.rotary_dim or config.head_dim
        lr = config.longrope or {}
        factors = lr.get("long_factor" if long_rope else "short_factor") or [1.0] * (rot // 2)
        model.set_rope_freq_factors(
            torch.tensor(factors), rot, float(lr.get("attention_factor", 1.0))
        )
    if layers is not None:
        _keep_stage(transformer, whole, layers)
        model.config, model.layers = whole, layers
    model.tie_weights()
    if meta_weights:
        return model.eval()
    return model.to(device).eval()


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


def _keep_stage(transformer: nn.Module, config: ModelConfig, layers: range) -> None:
    """Drops what another stage runs: ExecuTorch's Transformer then embeds
    only when it has an embedding, and returns normed logits only when it
    has an output; else the hidden state of every position."""
    if layers.start > 0:
        transformer.tok_embeddings = None
        transformer.apply_embedding = False
    if layers.stop < config.n_layers:
        transformer.norm = nn.Identity()
        transformer.output = None
        transformer.apply_output = False
        transformer.generate_full_logits = True


def _real_rope(transformer: nn.Module, args: Any) -> None:
    """ExecuTorch's Rope built on the CPU, in place of the one a meta-device
    construction made (its tables are computed at construction); every layer
    shares it, as construct_transformer's does."""
    old = transformer.rope
    with torch.device("cpu"):
        rope = type(old)(args)
    transformer.rope = rope
    for layer in transformer.layers:
        if getattr(layer.attention, "rope", None) is old:
            layer.attention.rope = rope


def _inv_freqs(theta: float, dims: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))


# --- Gemma 2/3: what ExecuTorch's Transformer has switches for but does not
# compute (its block ignores post norms and the MLP's activation, its SDPA
# has no window, score cap or scale, its RoPE one base for all layers). ----


@dataclass(frozen=True)
class AttentionRule:
    """How one layer's scores differ from plain causal SDPA."""

    window: int | None = None  # attend to positions p - window < j <= p
    softcap: float | None = None  # scores -> softcap * tanh(scores / softcap)
    scale: float | None = None  # instead of 1/sqrt(head_dim)


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, rule: AttentionRule | None) -> Tensor:
    """SDPA of q [B, H, T, D] over k, v [B, KV_H, S, D] where `allowed`
    [T, S] (bool) is true, under `rule`. The window is the caller's: it is
    already in `allowed`."""
    scale = rule.scale if rule is not None else None
    if rule is None or rule.softcap is None:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, enable_gqa=True, scale=scale
        )
    # Query heads grouped per kv head, broadcast against it: no copies of
    # k and v, and no reshape that mixes a dynamic length (in a .pt2).
    kv = k.shape[1]
    qg = q.unflatten(1, (kv, q.shape[1] // kv))
    s = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2))
    s = s * (scale or 1.0 / math.sqrt(q.shape[-1]))
    s = torch.tanh(s / rule.softcap) * rule.softcap
    s = torch.where(allowed, s, torch.full_like(s, float("-inf")))
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    return torch.matmul(p, v.unsqueeze(2)).flatten(1, 2)


def within_window(
    allowed: Tensor, q_pos: Tensor, k_pos: Tensor, rule: AttentionRule | None
) -> Tensor:
    """`allowed` [T, S] narrowed to the rule's window (q_pos [T], k_pos [S])."""
    if rule is None or rule.window is None:
        return allowed
    return allowed & ((q_pos[:, None] - k_pos[None, :]) < rule.window)


class RuleSDPA(nn.Module):
    """ExecuTorch's SDPA interface for a layer with an AttentionRule, over the
    whole static cache and the attention's mask (its window is in the mask:
    _gemma_extras bands it). In a .pte with ExecuTorch's custom ops
    (`custom_op`), llama::custom_sdpa takes the mask and scale; a score cap
    it cannot do, so those layers stay plain aten."""

    def __init__(self, dim: int, rule: AttentionRule):
        super().__init__()
        self.dim = dim
        self.rule = rule
        self.custom_op = False

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask) -> Tensor:  # noqa: ANN001 (ExecuTorch's SDPA signature)
        if self.custom_op and self.rule.softcap is None:
            additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(
                ~mask, float("-inf")
            )
            y = torch.ops.llama.custom_sdpa(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                0,
                additive,
                0,
                False,
                self.rule.scale,
            )
            return y.reshape(bsz, seqlen, self.dim)
        y = attend(q, k, v, mask, self.rule)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)


class LayerRope(nn.Module):
    """Gemma 3's RoPE per layer type: the tables hold the global layers'
    frequencies in the first half of each row and the local layers' in the
    second; each layer rotates with its own half."""

    def __init__(self, rotate: nn.Module, local: bool, half: int):
        super().__init__()
        self.rotate = rotate
        self.start = half if local else 0
        self.half = half

    def forward(self, q: Tensor, k: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> tuple:
        cos = freqs_cos.narrow(-1, self.start, self.half)
        sin = freqs_sin.narrow(-1, self.start, self.half)
        return self.rotate(q, k, cos, sin)


def _local_rope_tables(transformer: nn.Module, config: ModelConfig) -> None:
    rope = transformer.rope
    half = config.head_dim // 2
    t = torch.arange(rope.freqs_cos.shape[0], dtype=torch.float32)
    angles = torch.outer(t, _inv_freqs(config.local_rope_theta, config.head_dim))
    rope.freqs_cos = torch.cat([rope.freqs_cos, torch.cos(angles)], dim=-1)
    rope.freqs_sin = torch.cat([rope.freqs_sin, torch.sin(angles)], dim=-1)
    for i, layer in enumerate(transformer.layers):
        if i not in config.no_rope_layers:
            layer.attention.rope = LayerRope(rope.apply_rotary_emb, i in config.window_layers, half)


class Block(nn.Module):
    """ExecuTorch's TransformerBlock, same modules and names, with what Gemma
    adds: the embedding scale (first layer), RMSNorms after attention and the
    MLP (`post_attention_norm`, `post_ffn_norm`), and a GELU gate; and
    OLMo 2's block, which has the post norms only."""

    def __init__(self, block: nn.Module, config: ModelConfig, first: bool):
        super().__init__()
        self.attention = block.attention
        self.attention_norm = block.attention_norm if config.pre_norms else nn.Identity()
        self.ffn_norm = block.ffn_norm if config.pre_norms else nn.Identity()
        self.feed_forward = block.feed_forward
        self.post_norms = config.post_norms
        if self.post_norms:
            self.post_attention_norm = copy.deepcopy(block.ffn_norm)
            self.post_ffn_norm = copy.deepcopy(block.ffn_norm)
        if config.qk_norm_heads:
            attn = self.attention
            attn.q_norm_fn = all_heads_norm(attn.q_norm_fn, config.n_heads * config.head_dim)
            attn.k_norm_fn = all_heads_norm(attn.k_norm_fn, config.n_kv_heads * config.head_dim)
        self.gelu = config.hidden_act == "gelu_tanh"
        self.scaled = first and config.embedding_scale != 1.0
        # In the activations' dtype, as transformers and llama.cpp round it.
        scale = torch.tensor(config.embedding_scale if self.scaled else 1.0)
        self.register_buffer("embedding_scale", scale, persistent=False)

    def forward(self, x, freqs_cos, freqs_sin, attn_options) -> tuple:  # noqa: ANN001 (ExecuTorch's block signature)
        if self.scaled:
            x = x * self.embedding_scale.to(x.dtype)
        a, update = self.attention(self.attention_norm(x), freqs_cos, freqs_sin, **attn_options)
        h = x + (self.post_attention_norm(a) if self.post_norms else a)
        f = self.feed_forward
        y = self.ffn_norm(h)
        if self.gelu:
            y = f.w2(torch.nn.functional.gelu(f.w1(y), approximate="tanh") * f.w3(y))
        else:
            y = f(y)
        return h + (self.post_ffn_norm(y) if self.post_norms else y), update


def all_heads_norm(like: nn.Module, dim: int) -> nn.Module:
    """ExecuTorch's per-head q/k RMSNorm (`like`), over all heads together:
    OLMo 2's norm of the whole q and k projections. Same weight name."""

    class AllHeadsRMSNorm(type(like)):
        def forward(self, x: Tensor) -> Tensor:  # [B, T, heads, head_dim]
            return super().forward(x.flatten(-2)).view_as(x)

    return AllHeadsRMSNorm(dim, eps=like.eps)


def _gemma_extras(transformer: nn.Module, config: ModelConfig) -> nn.Module:
    if config.post_norms or config.hidden_act != "silu" or config.embedding_scale != 1.0:
        for i, layer in enumerate(transformer.layers):
            transformer.layers[i] = Block(layer, config, i == 0)
    for i, layer in enumerate(transformer.layers):
        attn = layer.attention
        window = config.sliding_window if i in config.window_layers else None
        if window is not None and window >= attn.mask.shape[0]:
            window = None  # no position in the cache is that far back
        rule = AttentionRule(window, config.attn_softcap, config.attn_scale)
        if rule == AttentionRule():
            continue
        if window is not None:
            n = attn.mask.shape[0]
            pos = torch.arange(n)
            attn.mask = within_window(attn.mask, pos, pos, rule)
        attn.SDPA = RuleSDPA(attn.SDPA.dim, rule)
    if config.final_softcap:
        return softcapped_transformer(transformer, config.final_softcap)
    return transformer


def softcapped_transformer(transformer: nn.Module, cap: float) -> nn.Module:
    """ExecuTorch's Transformer, same modules, whose logits are capped
    (Gemma 2's final_logit_softcapping)."""
    base = type(transformer)

    class SoftcappedTransformer(base):
        def forward(self, tokens=None, attn_options=None, h=None):  # noqa: ANN001, ANN202
            logits = super().forward(tokens, attn_options, h)
            if not self.apply_output:  # hidden states (SlotModel.hidden_slots): no cap
                return logits
            return torch.tanh(logits / self.final_softcap) * self.final_softcap

    out = SoftcappedTransformer(transformer.params, transformer.layers, transformer.rope)
    out.final_softcap = cap
    return out


def rope_scaling_factors(config: ModelConfig) -> torch.Tensor:
    """Per-frequency divisors for the config's rope_scaling."""
    if set(config.rope_scaling) == {"factor"}:  # linear
        return torch.full((config.head_dim // 2,), float(config.rope_scaling["factor"]))
    return llama3_rope_factors(config)


class NoRope(nn.Module):
    """A NoPE layer's stand-in for ExecuTorch's Rope: q and k unrotated."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor
    ) -> tuple:
        return q, k


def llama3_rope_factors(config: ModelConfig) -> torch.Tensor:
    """Llama 3.x rope scaling as divisors of the base frequencies (GGUF's
    rope_freqs): long wavelengths slowed by `factor`, short ones kept, the
    band between blended, with every value from the config."""
    rs = config.rope_scaling
    factor = float(rs["factor"])
    low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = float(rs["original_max_position_embeddings"])
    if high <= low:
        raise ConfigError(
            f"rope_scaling: high_freq_factor {high} must exceed low_freq_factor {low}"
        )
    hd = config.head_dim
    inv = 1.0 / config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    between = (wavelen >= old / high) & (wavelen <= old / low)
    scaled = torch.where(between, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return (inv / scaled).float()


class FilledCacheSDPA(nn.Module):
    """Attention over the filled part of the cache only.

    ExecuTorch's SDPA attends over the whole static cache with a mask and
    repeats K/V per query head, which costs decode most of its time at long
    max_seq_length. Slicing to the last written position and using
    grouped-query SDPA computes the same softmax: the sliced-off entries are
    masked out anyway. The position is read with .item(), which torch.export
    and dynamo keep as an unbacked size, so eager, torch.compile and
    AOTInductor all run this one graph. (A .pte gets the same effect from
    ExecuTorch's own llama:: ops.)
    """

    def __init__(self, dim: int, rule: AttentionRule | None = None):
        super().__init__()
        self.dim = dim
        self.rule = rule

    def forward(
        self,
        input_pos: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bsz: int,
        seqlen: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        if self.rule is None or self.rule.softcap is None:
            # A capped layer's explicit attention keeps the whole cache:
            # inductor cannot lower its matmuls over the unbacked length.
            end = input_pos[-1].item() + 1
            torch._check(end >= 1)
            torch._check(end <= k.shape[2])
            k, v, mask = k[:, :, :end], v[:, :, :end], mask[:, :end]
        y = attend(q, k, v, mask, self.rule)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)


def attend_filled_cache(model: Model) -> Model:
    """Swaps in FilledCacheSDPA: for eager, torch.compile and AOTInductor."""
    for layer in model.transformer.layers:
        attn = layer.attention
        if hasattr(attn, "SDPA"):
            attn.SDPA = FilledCacheSDPA(attn.SDPA.dim, getattr(attn.SDPA, "rule", None))
    return model


def fold_multipliers(config: ModelConfig, sd: dict[str, torch.Tensor]) -> ModelConfig:
    """Folds Granite's scalar multipliers into weights, in place.

    Each multiplier scales a linear map's output, so scaling that map's weight
    gives the same function with the plain Llama graph. Returns the config
    with the multipliers reset (and embeddings untied when they must differ).
    """
    emb, res = config.embedding_multiplier, config.residual_multiplier
    att, logit = config.attention_multiplier, config.logits_scaling
    if emb == 1.0 and res == 1.0 and att is None and logit == 1.0:
        return config
    # A pipeline stage's weights lack the other stages' (in_stage).
    tie = config.tie_embeddings
    if tie and "output.weight" not in sd and "tok_embeddings.weight" in sd:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    if "tok_embeddings.weight" in sd:
        sd["tok_embeddings.weight"] = sd["tok_embeddings.weight"] * emb
    if "output.weight" in sd:
        sd["output.weight"] = sd["output.weight"] / logit
    # SDPA divides by sqrt(head_dim); Granite wants `att` instead.
    q_scale = 1.0 if att is None else float(att) * math.sqrt(config.head_dim)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        for name in ("attention.wo.weight", "feed_forward.w2.weight"):
            if p + name in sd:
                sd[p + name] = sd[p + name] * res
        for name in ("attention.wq.weight", "attention.wq.bias"):
            if p + name in sd:
                sd[p + name] = sd[p + name] * q_scale
    return dataclasses.replace(
        config,
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        attention_multiplier=None,
        logits_scaling=1.0,
        tie_embeddings=False,
    )


# --- slots: one batched forward over many sequences (the server's engine) ---


@dataclass
class SlotBatch:
    """What one batched forward runs: each entry is (slot, ids, start).

    Tokens of all entries are laid out as one sequence [1, T] so that
    ExecuTorch's Transformer applies RoPE per token from `input_pos` (it has no
    per-row positions); only attention needs to know which slot a token
    belongs to, and SlotKVCache/SlotSDPA read that from here.
    """

    slots: torch.Tensor  # [T] the slot of each token
    spans: list  # per entry: (slot, first token index, token count, start position)


class SlotKVCache(nn.Module):
    """ExecuTorch's static KVCache with one row per slot; writes each token's
    K/V at its own slot and position."""

    def __init__(self, like: nn.Module, n_slots: int, plan: SlotPlan):
        super().__init__()
        _, heads, length, head_dim = like.k_cache.shape
        shape = (n_slots, heads, length, head_dim)
        kw = {"dtype": like.k_cache.dtype, "device": like.k_cache.device}
        self.register_buffer("k_cache", torch.zeros(shape, **kw), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, **kw), persistent=False)
        self.plan = plan

    def update(self, input_pos: torch.Tensor, k_val: torch.Tensor, v_val: torch.Tensor) -> tuple:
        slots = self.plan.batch.slots
        # k_val is [1, heads, T, head_dim]; the indexed view is [T, heads, head_dim].
        self.k_cache[slots, :, input_pos] = k_val[0].transpose(0, 1)
        self.v_cache[slots, :, input_pos] = v_val[0].transpose(0, 1)
        return self.k_cache, self.v_cache


class _SlotAttention(nn.Module):
    """ExecuTorch's SDPA interface over a SlotKVCache; `attend` is the
    attention of the step's tokens, [1, heads, T, head_dim]."""

    def __init__(self, dim: int, plan: SlotPlan, rule: AttentionRule | None = None):
        super().__init__()
        self.dim = dim
        self.plan = plan
        self.rule = rule

    def forward(
        self,
        input_pos: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bsz: int,
        seqlen: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        y = self.attend(input_pos, q, k, v, mask)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


class SlotSDPA(_SlotAttention):
    """FilledCacheSDPA per slot: each entry's queries attend over its own slot's
    cache up to its last position, with the same shapes (and so the same
    arithmetic) as a batch-1 FilledCacheSDPA call for that sequence."""

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        out = []
        for slot, first, n, start in self.plan.batch.spans:
            end = start + n
            y = attend(
                q[:, :, first : first + n],
                k[slot : slot + 1, :, :end],
                v[slot : slot + 1, :, :end],
                mask[first : first + n, :end],
                self.rule,
            )
            out.append(y)
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


class MaskedSlotSDPA(_SlotAttention):
    """SlotSDPA as one traceable graph, for a .pt2 with slots (export_llm --slots).

    SlotSDPA loops over the batch's entries in Python, which torch.export
    cannot trace. Here every token attends over the filled part of all the
    slots' caches at once, laid out as one sequence of slots x end keys, with
    a mask that keeps only its own slot up to its own position. Masked keys
    weigh exactly zero, so it is the same softmax, summed in another order.
    The other slots' keys are wasted multiplications, but every filled cache
    entry is still read once per step, as the per-slot loop reads it (and
    copied once, to lay the slots out as one sequence).
    """

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        slots = self.plan.batch.slots
        n_slots, heads, end, head_dim = k.shape
        if self.rule is None or self.rule.softcap is None:
            # Only the rows up to the highest slot in the step, each up to
            # the last position in it (the engine fills low slots first). A
            # capped layer keeps them all, as FilledCacheSDPA does.
            end = input_pos.max().item() + 1
            torch._check(end >= 1)
            torch._check(end <= k.shape[2])
            n_slots = slots.max().item() + 1
            torch._check(n_slots >= 1)
            torch._check(n_slots <= k.shape[0])
        k = k[:n_slots, :, :end].transpose(0, 1).reshape(1, heads, n_slots * end, head_dim)
        v = v[:n_slots, :, :end].transpose(0, 1).reshape(1, heads, n_slots * end, head_dim)
        key = torch.arange(n_slots * end, device=slots.device)
        allowed = ((key // end)[None, :] == slots[:, None]) & (
            (key % end)[None, :] <= input_pos[:, None]
        )
        allowed = within_window(allowed, input_pos, key % end, self.rule)
        return attend(q, k, v, allowed, self.rule)


class SlotPlan:
    """Holds the current SlotBatch for every layer's SlotKVCache/SlotSDPA."""

    batch: SlotBatch


class SlotModel(nn.Module):
    """A Model whose KV cache has `n_slots` independent rows.

    `forward_slots([(slot, ids, start), ...])` runs every entry in one
    forward and returns the last-position logits of each, [entries, vocab]
    (an entry `(slot, ids, start, True)` gets a row for each of its ids).
    Weights and every module but the cache and SDPA stay ExecuTorch's.

    `traceable=True` attends with MaskedSlotSDPA, so that `forward` (the
    same batch as tensors) can be exported; eager serving keeps SlotSDPA,
    whose per-slot arithmetic equals the batch-1 model's. Traceable, its
    forward also returns the hidden states it turned into those logits: a
    package with slots has them as its second output, which the server's
    /v1/embeddings reads (with `last` naming every token).
    """

    def __init__(self, model: Model, n_slots: int, traceable: bool = False):
        super().__init__()
        self.model = model
        self.n_slots = n_slots
        self.max_seq_length = model.max_seq_length
        self.plan = SlotPlan()
        self.traceable = traceable
        sdpa = MaskedSlotSDPA if traceable else SlotSDPA
        for layer in model.transformer.layers:
            attn = layer.attention
            if not hasattr(attn, "kv_cache"):
                raise ConfigError("this attention has no KV cache to give slots")
            attn.kv_cache = SlotKVCache(attn.kv_cache, n_slots, self.plan)
            rule = getattr(attn.SDPA, "rule", None)
            attn.SDPA = sdpa(attn.n_local_heads * attn.head_dim, self.plan, rule)

    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        slots: torch.Tensor,
        last: torch.Tensor,
        spans: list | None = None,
        images: Images = (),
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """tokens [1, T] at positions input_pos [T] in slots [T]; the logits
        of the tokens at `last` [E], [E, vocab], and when traceable their
        hidden states too, [E, dim]. SlotSDPA also needs `spans`. `images`
        (offsets into tokens) open the causal mask over their positions for
        every slot: a forward with images runs alone."""
        self.plan.batch = SlotBatch(slots, spans)
        t = self.model.transformer
        options = {"input_pos": input_pos, "last_valid_token_pos": last}
        if images:
            with self.model.image_blocks(input_pos, images):
                logits = t(None, options, self.model.embed(tokens, images))
            return self._rows(logits, tokens, last)
        if not self.traceable or not t.apply_output:
            return self._rows(t(tokens, options), tokens, last)
        # The Transformer without its output layer gives the final norm's
        # output; the output layer (and a softcap) then runs here, on it.
        t.apply_output = False
        try:
            h = t(tokens, options)
        finally:
            t.apply_output = True
        logits = t.output(h)
        cap = getattr(t, "final_softcap", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return self._rows(logits, tokens, last), self._rows(h, tokens, last)

    @staticmethod
    def _rows(x: torch.Tensor, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == tokens.shape[1] != last.shape[0]:
            x = x[:, last]  # full_logits
        return x.reshape(last.shape[0], -1)

    def forward_slots(self, entries: list, images: Images = ()) -> torch.Tensor:
        """`images` belong to the only entry (offsets into its ids)."""
        if images and len(entries) != 1:
            raise ValueError("a forward with images runs one slot")
        device = next(self.model.parameters()).device
        args = slot_inputs(entries, self.n_slots, self.max_seq_length, device)
        out = self.forward(*args, images=images)
        return out[0] if isinstance(out, tuple) else out

    def hidden_slots(self, entries: list) -> list[torch.Tensor]:
        """Like forward_slots, but each entry's last hidden state at every
        one of its tokens, [len(ids), dim]: the final norm's output, which
        the output layer would turn into logits (transformers'
        `last_hidden_state`, llama.cpp's embeddings). The same forward, with
        ExecuTorch's Transformer told to skip its output layer."""
        device = next(self.model.parameters()).device
        tokens, pos, slots, _, spans = slot_inputs(
            entries, self.n_slots, self.max_seq_length, device
        )
        every = torch.arange(tokens.shape[1], device=device)
        transformer = self.model.transformer
        transformer.apply_output = False
        try:
            h = self.forward(tokens, pos, slots, every, spans)
        finally:
            transformer.apply_output = True
        return [h[first : first + n] for _, first, n, _ in spans]


def slot_inputs(entries: list, n_slots: int, max_seq_length: int, device: Any = "cpu") -> tuple:
    """SlotModel.forward's arguments for [(slot, ids, start[, every]), ...]:
    an entry with `every` true asks for the logits after each of its ids
    (speculative decoding verifies a draft so), the others for their last."""
    ids, pos, slots, spans, last = [], [], [], [], []
    for entry in entries:
        slot, toks, start = entry[:3]
        every = len(entry) > 3 and entry[3]
        if not 0 <= slot < n_slots:
            raise ValueError(f"slot {slot} out of range (0..{n_slots - 1})")
        if start + len(toks) > max_seq_length:
            raise ValueError(f"slot {slot}: {start}+{len(toks)} exceeds the cache")
        first = len(ids)
        spans.append((slot, first, len(toks), start))
        ids.extend(toks)
        pos.extend(range(start, start + len(toks)))
        slots.extend([slot] * len(toks))
        last.extend(range(first, len(ids)) if every else [len(ids) - 1])

    def t(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    return t([ids]), t(pos), t(slots), t(last), spans
