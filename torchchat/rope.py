"""RoPE beyond ExecuTorch's one table of one base: Llama 3 and linear
scaling as per-frequency divisors (GGUF's rope_freqs), Gemma 3's local
layers with their own base, and SmolLM3's layers with none."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from torchchat.config import ConfigError, ModelConfig

# ExecuTorch's Rope.apply_rotary_emb: (q, k, cos, sin) -> (q, k).
Rotate = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def inv_freqs(theta: float, dims: int) -> Tensor:
    """RoPE's inverse frequencies over `dims` dimensions of a head."""
    return 1.0 / (theta ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))


class NoRope(nn.Module):
    """A NoPE layer's stand-in for ExecuTorch's Rope: q and k unrotated."""

    def forward(self, q: Tensor, k: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> tuple:
        return q, k


class LayerRope(nn.Module):
    """Gemma 3's RoPE per layer type: the tables hold the global layers'
    frequencies in the first half of each row and the local layers' in the
    second; each layer rotates with its own half."""

    def __init__(self, rotate: Rotate, local: bool, width: int):
        super().__init__()
        self.rotate = rotate
        self.start = width if local else 0
        self.width = width

    def forward(self, q: Tensor, k: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> tuple:
        cos = freqs_cos.narrow(-1, self.start, self.width)
        sin = freqs_sin.narrow(-1, self.start, self.width)
        return self.rotate(q, k, cos, sin)


# ExecuTorch's Transformer ships no types; read through nn.Module's
# __getattr__ each of its submodules would be `Tensor | Module`, so it is
# taken as Any.
def local_rope_tables(transformer: Any, config: ModelConfig, theta: float) -> None:
    """Gemma 3: the local layers' tables (base `theta`) beside the global
    ones, and each layer's LayerRope reading its half."""
    rope = transformer.rope
    half = config.head_dim // 2
    t = torch.arange(rope.freqs_cos.shape[0], dtype=torch.float32)
    angles = torch.outer(t, inv_freqs(theta, config.head_dim))
    rope.freqs_cos = torch.cat([rope.freqs_cos, torch.cos(angles)], dim=-1)
    rope.freqs_sin = torch.cat([rope.freqs_sin, torch.sin(angles)], dim=-1)
    for i, layer in enumerate(transformer.layers):
        if i not in config.no_rope_layers:
            layer.attention.rope = LayerRope(rope.apply_rotary_emb, i in config.window_layers, half)


def rope_scaling_factors(scaling: dict[str, float], config: ModelConfig) -> Tensor:
    """Per-frequency divisors for a rope_scaling (the config's)."""
    if set(scaling) == {"factor"}:  # linear
        return torch.full((config.head_dim // 2,), float(scaling["factor"]))
    return llama3_rope_factors(scaling, config)


def llama3_rope_factors(rs: dict[str, float], config: ModelConfig) -> Tensor:
    """Llama 3.x rope scaling as divisors of the base frequencies (GGUF's
    rope_freqs): long wavelengths slowed by `factor`, short ones kept, the
    band between blended, with every value from the config."""
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
