"""Drafters for speculative decoding (torchchat.generate.decode verifies them).

Prompt lookup (n-gram drafting, no second model): when the last few ids
occurred before, in the prompt or the reply so far, guess that what followed
them then follows them now. Edits, summaries, code changes and quoted
answers copy long runs of their prompt, and each run is then verified k ids
at a time in one forward instead of k forwards.
"""

from __future__ import annotations

from collections.abc import Sequence

SPECULATE_MODES = ("prompt-lookup",)
# Guesses verified per forward. On the built-in model on 2 CPU cores a
# forward of k + 1 ids costs about (1 + k/4) single-id forwards, so a run
# of guesses is cheap to check and long runs pay off; past 8 a rejected
# draft wastes more than a copied run saves (torchchat/bench/speculate.py).
DEFAULT_DRAFT_K = 6


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
            c = self._index.get(tuple(h[-n:]))
            if c is not None:
                return h[c : c + k]
        return []
