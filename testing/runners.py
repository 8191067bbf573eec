"""The C++ runners (et_run, aoti_run) from a test: their path in the runfiles,
and one run's generated ids through --ids-json."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path


def runfile(path: str) -> Path:
    """A file of the main repository in this test's runfiles."""
    return Path(os.environ["TEST_SRCDIR"]) / "_main" / path


def run_ids(
    binary: str | Path,
    artifact: str | Path,
    *args: str,
    prefix: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess[str], list[int] | None]:
    """Runs `prefix... binary artifact args... --ids-json FILE`; returns the
    process and the ids it generated (None when it failed). `prefix` runs
    the binary under another program (qemu)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "ids.json"
        cmd = [*prefix, str(binary), str(artifact), *args, "--ids-json", str(out)]
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
        ids = json.loads(out.read_text())["generated"] if p.returncode == 0 else None
    return p, ids
