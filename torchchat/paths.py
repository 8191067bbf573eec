"""Paths a user typed, as the user meant them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload


@overload
def user_path(p: str) -> Path: ...
@overload
def user_path(p: None) -> None: ...
def user_path(p: str | None) -> Path | None:
    """`bazel run` starts programs in the runfiles tree; a relative path is
    relative to where the user typed the command."""
    if p is None:
        return None
    path = Path(p).expanduser()
    base = os.environ.get("BUILD_WORKING_DIRECTORY")
    if not path.is_absolute() and base:
        path = Path(base) / path
    return path
