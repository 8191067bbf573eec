#!/usr/bin/env python3
"""Builds the locked Python environment into the user cache, once per lock.

`provision_venv.py LOCK PYTHON` makes `<cache>/venv-<key>/`, a virtualenv of
PYTHON (CPython 3.11) with exactly the files LOCK pins (`pip install
--no-deps --require-hashes`), and prints its path. The key hashes the lock,
the interpreter's version and these scripts.

It used to be built inside each Bazel output base. Every clone then had its
own venv at its own path, and since the toolchain's interpreter script names
that path, every Python action's cache key differed from one clone to the
next: a clean clone re-ran every Python genrule (the built-in .pte alone is
five minutes) even with a warm disk cache, and reinstalled ~2 GB of wheels.
One venv per lock at one path in the cache makes those keys the same in
every clone, so the disk cache serves them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provision_cache  # noqa: E402


def die(msg: str) -> None:
    print(f"tools/provision_venv.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(args: list[str], what: str) -> None:
    # stdout goes to stderr: the last line on stdout is the prefix.
    r = subprocess.run(args, stdout=sys.stderr, stderr=sys.stderr)
    if r.returncode != 0:
        die(f"{what} failed (exit {r.returncode})")


def build(prefix: str, python: str, lock: str) -> str:
    # --clear: a run cut short leaves no marker, and its half-built
    # environment is started afresh.
    run([python, "-m", "venv", "--clear", prefix], "python -m venv")
    run(
        [
            os.path.join(prefix, "bin", "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            "--no-input",
            "--progress-bar=off",
            "--disable-pip-version-check",
            "-r",
            lock,
        ],
        f"pip install -r {lock}",
    )
    return f"locked environment of {lock}\n"


def main() -> None:
    if len(sys.argv) != 3:
        die("usage: provision_venv.py LOCK PYTHON")
    lock, python = sys.argv[1], sys.argv[2]
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True
    )
    if version.returncode != 0:
        die(f"{python} does not run: {version.stderr.strip()}")
    h = hashlib.sha256(provision_cache.key("provision_venv.py", "provision_cache.py").encode())
    h.update(version.stdout.encode())
    with open(lock, "rb") as f:
        h.update(f.read())
    print(provision_cache.provisioned("venv", h.hexdigest()[:12], lambda p: build(p, python, lock)))


if __name__ == "__main__":
    main()
