"""What ExecuTorch's Transformer has switches for but does not compute,
added on its own modules with their weight names: Gemma 2/3's and OLMo 2's
block (post norms, GELU gate, embedding scale, all-heads q/k norm), windows,
score and logit soft-caps. RoPE's extras are torchchat.rope.

ExecuTorch's modules ship no types; read through nn.Module's __getattr__
each of their submodules would be `Tensor | Module`, so they are taken as
Any here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from torchchat.attention import AttentionRule, RuleSDPA, within_window
from torchchat.config import ModelConfig


class Block(nn.Module):
    """ExecuTorch's TransformerBlock, same modules and names, with what Gemma
    adds: the embedding scale (first layer), RMSNorms after attention and the
    MLP (`post_attention_norm`, `post_ffn_norm`), and a GELU gate; and
    OLMo 2's block, which has the post norms only."""

    def __init__(self, block: Any, config: ModelConfig, first: bool):
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


def all_heads_norm(like: Any, dim: int) -> nn.Module:
    """ExecuTorch's per-head q/k RMSNorm (`like`), over all heads together:
    OLMo 2's norm of the whole q and k projections. Same weight name."""

    # A subclass of whichever RMSNorm class this ExecuTorch release has, so
    # the weight keeps its name and the norm its arithmetic.
    class AllHeadsRMSNorm(type(like)):  # type: ignore[misc]
        def forward(self, x: Tensor) -> Tensor:  # [B, T, heads, head_dim]
            return super().forward(x.flatten(-2)).view_as(x)

    return AllHeadsRMSNorm(dim, eps=like.eps)


def add_extras(transformer: Any, config: ModelConfig) -> Any:
    """ExecuTorch's Transformer with the config's blocks, windows and caps."""
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


def softcapped_transformer(transformer: Any, cap: float) -> Any:
    """ExecuTorch's Transformer, same modules, whose logits are capped
    (Gemma 2's final_logit_softcapping)."""
    base: Any = type(transformer)

    class SoftcappedTransformer(base):
        def forward(self, tokens=None, attn_options=None, h=None):  # noqa: ANN001, ANN202
            logits = super().forward(tokens, attn_options, h)
            if not self.apply_output:  # hidden states (SlotModel.hidden_slots): no cap
                return logits
            return torch.tanh(logits / self.final_softcap) * self.final_softcap

    out = SoftcappedTransformer(transformer.params, transformer.layers, transformer.rope)
    out.final_softcap = cap
    return out
