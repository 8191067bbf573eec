"""Log-likelihoods of token sequences: the one thing eval asks of a model.

Every question, choice and perplexity window becomes a `Group`: a shared
prefix and the branches that continue it. A multiple-choice question is
its context and one branch per choice; a perplexity window is its
unscored head and one branch, the tokens it scores. Each branch token is
predicted from the tokens before it, the first from the prefix's last.

Two ways to run groups, with the same results:
- `PackedScorer` (the eager model): many groups per forward. Their tokens
  are laid out as one sequence, each token at its own position, with a
  mask that lets a branch see only its prefix and itself. The KV cache is
  bypassed and logits are computed only where a score needs them.
- `CachedScorer` (any forward that returns every position's logits: a
  .pte or .pt2 exported with --full-logits, or `one_token_at_a_time`):
  one group at a time, the prefix prefilled once and each branch run after
  it from the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from torchchat.attention import AttentionRule, attend, within_window
from torchchat.model import Model


@dataclass
class Group:
    prefix: list[int]
    branches: list[list[int]]


@dataclass
class BranchScore:
    """Per branch token: its log-probability and whether it was the argmax."""

    logprobs: list[float] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)


Progress = Callable[[int], None]  # called with the tokens just run


class Scorer(Protocol):
    max_seq_length: int

    def score(
        self, groups: Sequence[Group], progress: Progress | None = None
    ) -> list[list[BranchScore]]:
        """Per group, per branch: the scores of the branch's tokens."""
        ...


def tokens_of(g: Group) -> int:
    """The positions a group runs: the prefix, then each branch but its last token."""
    return len(g.prefix) + sum(len(b) - 1 for b in g.branches)


def _score(logits: torch.Tensor, targets: Sequence[int]) -> BranchScore:
    """logits[i] predicts targets[i]."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    t = torch.tensor(targets, dtype=torch.long)
    picked = lp.gather(1, t[:, None])[:, 0]
    greedy = lp.argmax(dim=-1) == t
    return BranchScore(picked.double().tolist(), greedy.tolist())


class CachedScorer:
    """One group at a time over a batch-1 forward with a KV cache.

    `forward_all(tokens[1, T], input_pos[T]) -> logits[T, vocab]`. Positions
    index the cache directly, so each branch simply starts where the prefix
    ended and overwrites the previous branch.
    """

    def __init__(
        self, forward_all: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], max_seq_length: int
    ):
        self.forward_all = forward_all
        self.max_seq_length = max_seq_length

    def _run(self, ids: Sequence[int], start: int) -> torch.Tensor:
        tokens = torch.tensor([list(ids)], dtype=torch.long)
        pos = torch.arange(start, start + len(ids), dtype=torch.long)
        return self.forward_all(tokens, pos)

    @torch.inference_mode()
    def score(
        self, groups: Sequence[Group], progress: Progress | None = None
    ) -> list[list[BranchScore]]:
        out = []
        for g in groups:
            last = self._run(g.prefix, 0)[-1:]
            scores = []
            for b in g.branches:
                logits = (
                    last if len(b) == 1 else torch.cat([last, self._run(b[:-1], len(g.prefix))])
                )
                scores.append(_score(logits, b))
            out.append(scores)
            if progress:
                progress(tokens_of(g))
        return out


def one_token_at_a_time(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A forward_all for CachedScorer that runs each token as generation's
    decode step does (one row through the KV cache): scores the decode
    kernels, e.g. a GGUF's 8-bit activations, which prefill never runs."""

    def forward_all(tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        rows = [
            model(tokens[:, i : i + 1], input_pos[i : i + 1]).reshape(1, -1)
            for i in range(tokens.shape[1])
        ]
        return torch.cat(rows)

    return forward_all


# --- packed: many groups in one eager forward ------------------------------------------


class _Plan:
    """The current forward's attention mask and token positions, shared by
    every layer."""

    mask: torch.Tensor
    pos: torch.Tensor


class _NoCache(nn.Module):
    """Stands in for the KV cache: attention sees only this call's tokens."""

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class _PackedSDPA(nn.Module):
    """Attention under the plan's mask instead of the cache's causal one."""

    def __init__(self, dim: int, plan: _Plan, rule: AttentionRule | None = None):
        super().__init__()
        self.dim = dim
        self.plan = plan
        self.rule = rule

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask):  # noqa: ANN001 (ExecuTorch's SDPA signature)
        pos = self.plan.pos
        allowed = within_window(self.plan.mask, pos, pos, self.rule)
        y = attend(q, k, v, allowed, self.rule)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)


@dataclass
class _Layout:
    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    # per token: which tokens it may attend to, as (start, end) index ranges
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    # per group, per branch: the token indices whose logits predict it
    reads: list[list[list[int]]] = field(default_factory=list)

    def add(self, g: Group) -> None:
        base, p = len(self.ids), len(g.prefix)
        for i, t in enumerate(g.prefix):
            self.ids.append(t)
            self.pos.append(i)
            self.spans.append([(base, base + i + 1)])
        reads = []
        for b in g.branches:
            start = len(self.ids)
            for j, t in enumerate(b[:-1]):
                self.ids.append(t)
                self.pos.append(p + j)
                self.spans.append([(base, base + p), (start, start + j + 1)])
            reads.append([base + p - 1] + list(range(start, start + len(b) - 1)))
        self.reads.append(reads)

    def mask(self) -> torch.Tensor:
        n = len(self.ids)
        m = torch.zeros(n, n, dtype=torch.bool)
        for i, spans in enumerate(self.spans):
            for s, e in spans:
                m[i, s:e] = True
        return m


class PackedScorer:
    """Groups packed into forwards of up to `batch_tokens` positions on an
    eager torchchat.model.Model (its cache and SDPA modules are replaced:
    the model is the scorer's from then on)."""

    def __init__(self, model: Model, batch_tokens: int = 1024):
        self.model = model
        self.max_seq_length: int = model.max_seq_length
        self.batch_tokens = batch_tokens
        self.plan = _Plan()
        for layer in model.transformer.layers:
            attn = layer.attention
            attn.kv_cache = _NoCache()
            rule = getattr(attn.SDPA, "rule", None)
            attn.SDPA = _PackedSDPA(attn.n_local_heads * attn.head_dim, self.plan, rule)
        # Logits only at the positions it is given (last_valid_token_pos).
        model.transformer.generate_full_logits = False
        self.device = next(model.parameters()).device

    def _forward(self, groups: Sequence[Group]) -> list[list[BranchScore]]:
        lay = _Layout()
        for g in groups:
            lay.add(g)
        self.plan.mask = lay.mask().to(self.device)
        self.plan.pos = torch.tensor(lay.pos, dtype=torch.long, device=self.device)
        reads = [i for group in lay.reads for branch in group for i in branch]
        logits = (
            self.model.transformer(
                torch.tensor([lay.ids], dtype=torch.long, device=self.device),
                {
                    "input_pos": torch.tensor(lay.pos, dtype=torch.long, device=self.device),
                    "last_valid_token_pos": torch.tensor(
                        reads, dtype=torch.long, device=self.device
                    ),
                },
            )
            .reshape(len(reads), -1)
            .cpu()
        )
        out, k = [], 0
        for g, group_reads in zip(groups, lay.reads):
            scores = []
            for b, r in zip(g.branches, group_reads):
                scores.append(_score(logits[k : k + len(r)], b))
                k += len(r)
            out.append(scores)
        return out

    @torch.inference_mode()
    def score(
        self, groups: Sequence[Group], progress: Progress | None = None
    ) -> list[list[BranchScore]]:
        out: list[list[BranchScore]] = []
        batch: list[Group] = []
        size = 0
        for g in list(groups) + [None]:
            n = tokens_of(g) if g is not None else 0
            if batch and (g is None or size + n > self.batch_tokens):
                out.extend(self._forward(batch))
                if progress:
                    progress(size)
                batch, size = [], 0
            if g is not None:
                batch.append(g)
                size += n
        return out


def check_fits(g: Group, max_seq_length: int) -> None:
    longest = len(g.prefix) + max((len(b) for b in g.branches), default=0) - 1
    if longest > max_seq_length:
        raise ValueError(f"a group needs {longest} positions, the model has {max_seq_length}")


def total_logprob(s: BranchScore, last: int | None = None) -> tuple[float, bool]:
    """(sum of log-probabilities, all greedy) over the last `last` tokens."""
    lp = s.logprobs if last is None else s.logprobs[-last:]
    gr = s.greedy if last is None else s.greedy[-last:]
    return math.fsum(lp), all(gr)
