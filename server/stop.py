"""Stop strings, matched across token boundaries; the stop text is never sent.

Text arrives in pieces (one per token, or fewer where a UTF-8 character
spans tokens). A piece may end with the start of a stop string whose rest
comes with the next token, so the matcher holds back the longest tail that
could still begin one and releases it once it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched = ""

    def push(self, text: str) -> str:
        """The text that is now safe to send; after a match, nothing more."""
        if self.stopped:
            return ""
        buf = self._held + text
        first = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            self.stopped, self.matched, self._held = True, first[1], ""
            return buf[: first[0]]
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation: whatever was held back was no stop."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of a stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
