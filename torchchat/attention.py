"""Attention as the model definition computes it beside ExecuTorch's SDPA:
the per-layer rules ExecuTorch's SDPA lacks (Gemma's window, score cap and
query scale), and attention over the filled part of the cache only (eager,
torch.compile and AOTInductor), float32 through torchchat::row_sdpa, whose
rows do not depend on the rows beside them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernels import row_sdpa


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


def attend_rows(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, slots: Tensor | None, rule: AttentionRule | None
) -> Tensor | None:
    """q [1, H, T, D] over the whole cache k, v [S, KV_H, L, D] where mask
    [T, L] is true (row t in cache row slots[t]; none: 0) through
    torchchat::row_sdpa, whose rows do not depend on the rows beside them
    (kernels/row_sdpa.cc): a speculative check of k ids then gives each id
    the bits of the one-id forward at its position, in eager and in a
    compiled package, where a loop over rows cannot be traced. None where
    the op does not run (not float32 on the CPU)."""
    if not row_sdpa.fits(q, k, mask):
        return None
    scale = rule.scale if rule is not None else None
    softcap = rule.softcap if rule is not None else None
    return row_sdpa.row_sdpa(q, k, v, mask, slots, scale, softcap)


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
        rows = attend_rows(q, k, v, mask, None, self.rule)
        if rows is not None:
            return rows.transpose(1, 2).reshape(bsz, seqlen, self.dim)
        if isinstance(seqlen, int) and 1 < seqlen <= ROWWISE_MAX_ROWS and self.eager():
            return self.rowwise(input_pos, q, k, v, bsz, mask)
        if self.rule is None or self.rule.softcap is None:
            # A capped layer's explicit attention keeps the whole cache:
            # inductor cannot lower its matmuls over the unbacked length.
            end = input_pos[-1].item() + 1
            torch._check(end >= 1)
            torch._check(end <= k.shape[2])
            k, v, mask = k[:, :, :end], v[:, :, :end], mask[:, :end]
        y = attend(q, k, v, mask, self.rule)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)

    @staticmethod
    def eager() -> bool:
        """Neither compiling nor exporting (a traced graph cannot loop over
        rows, and a symbolic length would be guarded to the loop's range)."""
        return not torch.compiler.is_compiling() and not torch.compiler.is_exporting()

    def rowwise(
        self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, bsz: int, mask: Tensor
    ) -> Tensor:
        """Each query row as the one-id forward at its position computes it:
        torch's SDPA sums a batch of rows in another order than one row
        (1 ulp apart), and the int8 activations of the GGUF kernels round
        such a difference into whole logits (0.85 on the built-in model),
        so a speculative draft verified in one forward would not keep plain
        decoding's ids. For the dtypes torchchat::row_sdpa does not take
        (attend_rows); eager only: a traced graph cannot loop over rows."""
        rows = [
            self.forward(input_pos[t : t + 1], q[:, :, t : t + 1], k, v, bsz, 1, mask[t : t + 1])
            for t in range(q.shape[2])
        ]
        return torch.cat(rows, dim=1)


# Forwards of up to this many ids (a speculative draft and its check,
# draft_k <= 15) attend one row at a time in eager where torchchat::row_sdpa
# does not run (FilledCacheSDPA.rowwise).
ROWWISE_MAX_ROWS = 16
