"""Checks (or, with --fix, applies) the tree's one C++ and one Python style,
and the library code's types.

    tools/bazel run //tools/lint            # check; exits 1 on any finding
    tools/bazel run //tools/lint -- --fix   # rewrite files in place

C++ goes through clang-format (.clang-format) and Python through ruff's
formatter and linter (ruff.toml), both pinned in the Python lock, and the
library code through mypy (mypy.ini; also pinned), which --fix only checks.
Its cache lives in the user cache, so a second run reads only what changed. The files
are the ones git tracks, so build outputs and the vendored lock are never
touched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CXX_SUFFIXES = (".cc", ".h", ".cpp")


def tools() -> tuple[str, str]:
    """clang-format and ruff, from their wheels in the locked environment."""
    try:
        import clang_format
        from ruff.__main__ import find_ruff_bin
    except ImportError as e:
        sys.exit(f"lint: error: {e.name} is not in the Python environment (see the lock)")
    return clang_format.get_executable("clang-format"), find_ruff_bin()


def mypy(root: Path) -> int:
    """mypy over mypy.ini's files; 0 when they type-check."""
    from mypy import api

    from tools.provision_cache import cache_dir

    os.chdir(root)  # mypy.ini's `files` are relative to the tree
    out, err, rc = api.run(
        ["--config-file", str(root / "mypy.ini"), "--cache-dir", f"{cache_dir()}/mypy"]
    )
    if rc:
        sys.stdout.write(out)
        sys.stderr.write(err)
    return rc


def tracked(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()]


def run(cmd: Sequence[str], root: Path) -> int:
    return subprocess.run(list(cmd), cwd=root).returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lint", description=__doc__.splitlines()[0])
    p.add_argument("--fix", action="store_true", help="rewrite files instead of checking")
    args = p.parse_args(argv)
    root = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or Path.cwd())
    files = tracked(root)
    cxx = [f for f in files if f.endswith(CXX_SUFFIXES) and not f.startswith("third_party/")]
    clang_format, ruff = tools()
    rc = 0
    if args.fix:
        rc |= run([clang_format, "-i", "--style=file", *cxx], root)
        rc |= run([ruff, "check", "--fix", "--quiet", "."], root)
        rc |= run([ruff, "format", "--quiet", "."], root)
        return rc | mypy(root)
    rc |= run([clang_format, "--dry-run", "-Werror", "--style=file", *cxx], root)
    rc |= run([ruff, "format", "--check", "--quiet", "."], root)
    rc |= run([ruff, "check", "--quiet", "."], root)
    rc |= mypy(root)
    print(
        "lint: clean" if rc == 0 else "lint: run `tools/bazel run //tools/lint -- --fix`",
        file=sys.stderr,
    )
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
