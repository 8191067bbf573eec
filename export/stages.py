"""Export's progress report: each stage as it starts, and its wall time."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Stages:
    """Prints each stage as it starts and its wall time when it ends."""

    def __init__(self, out: TextIO | None = None, enabled: bool = True):
        self.out = out or sys.stderr
        self.enabled = enabled
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[None]:
        if self.enabled:
            print(f"[{name}] {detail}".rstrip(), file=self.out, flush=True)
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        self.times[name] = self.times.get(name, 0.0) + dt
        if self.enabled:
            print(f"[{name}] done in {dt:.1f} s", file=self.out, flush=True)
