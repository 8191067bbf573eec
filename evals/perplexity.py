"""Perplexity of a text under a sliding window.

Two window rules, both over the whole text tokenized at once:

- `lm-eval` (the default): windows of `window` tokens starting every
  `stride` tokens; each scores the tokens no earlier window scored, so
  every token is scored once, with at least window - stride tokens of
  context after the first window. This is Hugging Face's strided
  perplexity; with stride = window - 1 it is lm-eval's rolling
  loglikelihood. When the tokenizer adds a bos, the text starts with it
  and the first text token is scored after it.
- `llama.cpp`: llama-perplexity's own. Without a stride, disjoint chunks
  of `window` tokens, each scoring its second half but the first token of
  it (tools/perplexity's `first = n_ctx/2`), with the chunk's first token
  replaced by bos when the tokenizer adds one. With `--stride S`
  (its --ppl-stride), windows start every S tokens and score their last S
  tokens, and no bos is substituted (perplexity_v2 sets it after the
  batch is built, so the model never sees it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evals.scoring import Group, Scorer, check_fits, tokens_of

if TYPE_CHECKING:
    from torchchat.tokenizer import Tokenizer

RULES = ("lm-eval", "llama.cpp")


class PerplexityError(ValueError):
    pass


@dataclass
class Window:
    """tokens[start:end] runs; tokens[score_from:end] are scored."""

    start: int
    end: int
    score_from: int


def lm_eval_windows(n: int, window: int, stride: int) -> list[Window]:
    if n < 2:
        raise PerplexityError(f"the text is {n} token(s); it needs at least 2")
    out, scored = [], 1  # token 0 has no context
    start = 0
    while scored < n:
        end = min(start + window, n)
        out.append(Window(start, end, max(scored, start + 1)))
        scored = end
        if end == n:
            break
        start += stride
    return out


def llama_cpp_windows(n: int, window: int, stride: int) -> list[Window]:
    if stride <= 0:
        if n < 2 * window:
            raise PerplexityError(
                f"the text is {n} tokens; llama.cpp's rule needs at least 2 windows ({2 * window})"
            )
        first = window // 2
        return [Window(s, s + window, s + first + 1) for s in range(0, n - window + 1, window)]
    if n <= window:
        raise PerplexityError(f"the text is {n} tokens, not longer than one window of {window}")
    count = (n - window + stride - 1) // stride
    return [
        Window(i * stride, i * stride + window, i * stride + window - stride) for i in range(count)
    ]


def windows(n: int, window: int, stride: int, rule: str) -> list[Window]:
    if rule == "llama.cpp":
        return llama_cpp_windows(n, window, stride)
    if not 0 < stride < window:
        # A window's first token has no context in it: windows must overlap.
        raise PerplexityError(f"the stride must be between 1 and window - 1 ({window - 1})")
    if n <= window:
        raise PerplexityError(
            f"the text is {n} tokens, shorter than one window of {window} (lower --window)"
        )
    return lm_eval_windows(n, window, stride)


def groups(tokens: Sequence[int], plan: Sequence[Window], bos_id: int | None) -> list[Group]:
    """One group per window: its unscored head as the prefix, the scored
    tail as the branch. llama.cpp's rule without a stride puts bos first."""
    out = []
    for w in plan:
        ids = list(tokens[w.start : w.end])
        if bos_id is not None:
            ids[0] = bos_id
        k = w.score_from - w.start
        out.append(Group(ids[:k], [ids[k:]]))
    return out


@dataclass
class Result:
    perplexity: float
    bits_per_byte: float
    tokens: int  # scored
    bytes: int  # of the scored tokens' text
    windows: int
    seconds: float
    tokens_run: int  # every window's, scored or context

    @property
    def tok_s(self) -> float:
        return self.tokens_run / self.seconds if self.seconds > 0 else 0.0


def summarize(logprobs: Sequence[float], n_bytes: int) -> tuple[float, float]:
    """(perplexity, bits per byte): exp of the mean negative log-likelihood
    per token, and the total in bits over the scored text's UTF-8 bytes
    (lm-eval's bits_per_byte)."""
    nll = -math.fsum(logprobs)
    return math.exp(nll / len(logprobs)), nll / math.log(2) / n_bytes


def evaluate(
    scorer: Scorer,
    tokenizer: Tokenizer,
    text: str,
    window: int,
    stride: int,
    rule: str = "lm-eval",
    limit: int | None = None,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
) -> Result:
    """Perplexity of `text`; `limit` keeps the first windows only.
    `progress(total_tokens, windows)` returns the per-batch callback."""
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    tokens = ([bos] if bos is not None else []) + tokenizer.encode(text, bos=False)
    plan = windows(len(tokens), window, stride, rule)[:limit]
    gs = groups(tokens, plan, bos if rule == "llama.cpp" and stride <= 0 else None)
    for g in gs:
        check_fits(g, scorer.max_seq_length)
    total = sum(tokens_of(g) for g in gs)
    start = time.perf_counter()
    scores = scorer.score(gs, progress(total, len(gs)) if progress else None)
    seconds = time.perf_counter() - start
    logprobs = [lp for s in scores for lp in s[0].logprobs]
    n_bytes = sum(len(tokenizer.decode(tokens[w.score_from : w.end]).encode()) for w in plan)
    ppl, bpb = summarize(logprobs, n_bytes)
    return Result(ppl, bpb, len(logprobs), n_bytes, len(plan), seconds, total)
