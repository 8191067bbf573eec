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


def et_run_greedy_pair(
    pte: str | Path, tokenizer: str | Path, eager: object, prompt: str, steps: int
) -> tuple[list[int], list[int]]:
    """et_run's greedy ids for `prompt` on `pte`, and eager's for as many
    ids, the prompt encoded as et_run encodes it (the same tokenizer
    library and rule). Raises AssertionError when et_run fails."""
    import torch

    from torchchat import tokenizer as tc_tokenizer
    from torchchat.generate import greedy

    r, got = run_ids(runfile("runner/et/et_run"), pte, "-i", prompt, "-n", str(steps), "-t", "0")
    if got is None:
        raise AssertionError(r.stderr[-2000:])
    tok = tc_tokenizer.load(tokenizer)
    with torch.no_grad():
        want = greedy(eager, tok.encode(prompt, bos=tok.add_bos), len(got))
    return got, want[: len(got)]
