"""Drafters for speculative decoding (torchchat.generate.decode verifies them).

Prompt lookup (n-gram drafting, no second model): when the last few ids
occurred before, in the prompt or the reply so far, guess that what followed
them then follows them now. Edits, summaries, code changes and quoted
answers copy long runs of their prompt, and each run is then verified k ids
at a time in one forward instead of k forwards.

A draft model: a smaller or cheaper model with the same tokenizer guesses
with its own greedy continuation. Its guesses are one id each (not a
distribution), so decode()'s keep-a-guess-the-pick-equals is exact
rejection sampling for them too.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchchat.generate import LLMModel, Slot, argmax

SPECULATE_MODES = ("prompt-lookup", "draft")
# Guesses verified per forward: 7, so that the id and its guesses are 8
# rows. The compiled 4-bit kernels run 8 or more rows as dequantized tiles
# and fewer row by row: on the built-in model on 2 cores a forward of 8
# ids costs 2.0x one id's, while 5 cost 2.6x and 7 cost 3.6x; longer
# drafts cost more and are accepted less (torchchat/README.md, measured by
# //torchchat:speculate_bench).
DEFAULT_DRAFT_K = 7
# `--draft-k auto`'s bounds: up to 16 rows a forward (the tiles' next size).
ADAPTIVE_K_RANGE = (1, 15)


class AdaptiveK:
    """The draft length of `--draft-k auto` (a torchchat.generate.AdaptK):
    after a draft of the full length was kept whole, guess two more next
    time; after fewer than half of a draft's guesses were kept, one fewer;
    within [lo, hi]. Long runs of copied text grow k to cover them in fewer
    forwards; text the drafter cannot guess stops paying for rows it then
    throws away (transformers' assisted generation moves its k the same
    way)."""

    def __init__(self, lo: int = ADAPTIVE_K_RANGE[0], hi: int = ADAPTIVE_K_RANGE[1]):
        if not 1 <= lo <= hi:
            raise ValueError(f"adaptive k needs 1 <= lo <= hi, got {lo} and {hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, k: int, drafted: int, accepted: int) -> int:
        if accepted == drafted >= k:
            k += 2
        elif 2 * accepted < drafted:
            k -= 1
        return max(self.lo, min(self.hi, k))


class PromptLookup:
    """Guesses the ids that followed the latest earlier occurrence of the
    last n ids of the history, trying n = max_ngram down to 1.

    An index of every n-gram seen (n <= max_ngram) to where the ids after
    its latest occurrence start is kept up to date as the history grows, so
    a guess costs the new ids, not a scan. A history that does not extend
    the previous one (a new prompt) starts the index again.
    """

    def __init__(self, max_ngram: int = 3):
        if max_ngram < 1:
            raise ValueError("max_ngram must be at least 1")
        self.max_ngram = max_ngram
        self._seen: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}

    def __call__(self, history: Sequence[int], k: int) -> list[int]:
        h = list(history)
        if len(h) < len(self._seen) or h[: len(self._seen)] != self._seen:
            self._seen, self._index = [], {}
        # Each position c with an id at it continues the n-grams ending there.
        for c in range(max(len(self._seen), 1), len(h)):
            for n in range(1, min(self.max_ngram, c) + 1):
                self._index[tuple(h[c - n : c])] = c
        self._seen = h
        for n in range(min(self.max_ngram, len(h)), 0, -1):
            at = self._index.get(tuple(h[-n:]))
            if at is not None:
                return h[at : at + k]
        return []


class DraftModel:
    """Guesses the draft model's greedy continuation of the history.

    It keeps its own slot (its own KV cache), so each call runs only the ids
    that cache lacks, then k greedy steps; guesses the target kept are in
    its cache already for the next call. Ids past `vocab_size` (a draft
    whose vocabulary is padded wider) end a draft.
    """

    def __init__(self, model: LLMModel, vocab_size: int):
        self.slot = Slot(model)
        self.vocab_size = vocab_size

    def __call__(self, history: Sequence[int], k: int) -> list[int]:
        k = min(k, self.slot.max_seq_length - len(history))
        if k <= 0 or not history:
            return []
        common = self.slot.reuse(history)
        logits = self.slot.prefill(list(history[common:]))
        out: list[int] = []
        while True:
            t = argmax(logits)
            if t >= self.vocab_size:
                break
            out.append(t)
            if len(out) == k:
                break
            logits = self.slot.step(t)
        return out
