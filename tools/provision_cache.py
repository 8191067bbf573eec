"""The user cache that tools/provision_*.py fill, shared by all of them.

Each tool lives in `<cache>/<name>-<key>/`, where the key hashes the scripts
that built it, so editing a script provisions afresh. A prefix counts only
once its `.provisioned` marker exists (written last), so an interrupted run
is redone from scratch. One provisioner runs at a time: they share
tools/bazel's lock.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))


def cache_dir() -> str:
    """The same directory as tools/bazel's (TORCHCHAT_CACHE, else
    $XDG_CACHE_HOME/torchchat, else ~/.cache/torchchat)."""
    return os.path.abspath(
        os.environ.get("TORCHCHAT_CACHE")
        or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchchat"
        )
    )


def key(*scripts: str) -> str:
    """Changes when any of these files in tools/ changes."""
    h = hashlib.sha256()
    for name in scripts:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def provisioned(name: str, key: str, build: Callable[[str], str]) -> str:
    """`<cache>/<name>-<key>`, calling build(prefix) first unless it is
    there already; build returns the text of the `.provisioned` marker.
    Prefixes of older keys unused for a day are removed."""
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    prefix = os.path.join(cache, f"{name}-{key}")
    marker = os.path.join(prefix, ".provisioned")
    if os.path.isfile(marker):
        return prefix
    with open(os.path.join(cache, ".provision.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(marker):
            return prefix  # another provisioner finished it while we waited
        text = build(prefix)
        with open(marker, "w") as f:
            f.write(text)
        for old in glob.glob(os.path.join(cache, f"{name}-*")):
            if (
                old != prefix
                and not old.endswith(".download")
                and time.time() - os.path.getmtime(old) > 86400
            ):
                shutil.rmtree(old, ignore_errors=True)
    return prefix
