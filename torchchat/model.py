"""The one model definition: eager generation, AOTI and ExecuTorch export.

The network is ExecuTorch's `examples/models/llama` Transformer (static KV
cache, Meta RoPE layout, exportable). This module only translates checkpoint
configs into its `ModelArgs`, wraps it with a fixed
`forward(tokens[1, T], input_pos[T]) -> logits` signature, and folds the few
Llama-family extras that Transformer does not model (Granite's multipliers,
GGUF's per-frequency RoPE factors) into weights and buffers, so the exported
graph stays the plain Llama graph. What cannot be folded (Gemma's post
norms, GELU, windows and soft-caps) is added on ExecuTorch's own modules,
with their weight names (torchchat.blocks, torchchat.attention).
The config is torchchat.config; slots (many sequences in one forward) are
torchchat.slots.

Weights use Meta's names (`layers.N.attention.wq.weight`, ...) and Meta's
RoPE layout (interleaved pairs); checkpoint loaders convert to that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchchat.architectures import architecture
from torchchat.attention import FilledCacheSDPA
from torchchat.blocks import add_extras
from torchchat.config import ModelConfig, context_length, stage_config
from torchchat.rope import NoRope, inv_freqs, local_rope_tables, rope_scaling_factors

# Images in a forward: (offset in its tokens, soft-token embeddings [n, dim]).
Images = Sequence[tuple[int, Tensor]]


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
        if not architecture(self.config.architecture).bidirectional_images:
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
        freqs = inv_freqs(self.config.rope_theta, rot) / factors.float().reshape(-1)
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
        transformer = add_extras(transformer, config)
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
        local_rope_tables(transformer, config, config.local_rope_theta)
    if config.rope_scaling:
        # ExecuTorch's own Llama 3 scaling hard-codes low_freq_factor 1 and an
        # 8192 original context; the config's values go in as GGUF's
        # per-frequency divisors instead.
        model.set_rope_freq_factors(rope_scaling_factors(config.rope_scaling, config))
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


def _keep_stage(transformer: Any, config: ModelConfig, layers: range) -> None:
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


def _real_rope(transformer: Any, args: Any) -> None:
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
