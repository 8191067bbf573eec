"""torchchat::row_sdpa against torch's SDPA over the filled cache, for a
decode row and a speculative check of 8 and 16 rows (not a test: prints
timings).

    tools/bazel run //kernels:row_sdpa_bench
    tools/bazel run //kernels:row_sdpa_bench -- --heads 32 --kv 8 --dim 128 --filled 1000

Each (op, rows) is timed in a fresh process of its own (2 threads), the
median of --rounds rounds of --calls calls each, called from Python as the
model calls it; the ratio is torch's time over row_sdpa's, both from this
run. The shape defaults to the built-in model's attention (9 query heads
over 3 kv heads of 64) with 450 cached positions of a 2048-row cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

OPS = ("row_sdpa", "torch_sdpa")


def inputs(a: argparse.Namespace, rows: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, a.heads, rows, a.dim, generator=g)
    k = torch.randn(1, a.kv, a.length, a.dim, generator=g)
    v = torch.randn(1, a.kv, a.length, a.dim, generator=g)
    pos = torch.arange(a.filled - rows, a.filled)
    mask = torch.arange(a.length)[None, :] <= pos[:, None]
    return q, k, v, mask


def time_one(a: argparse.Namespace, op: str, rows: int) -> list[float]:
    """Median-able per-call microseconds, one number per round."""
    torch.set_num_threads(a.threads)
    q, k, v, mask = inputs(a, rows)
    if op == "row_sdpa":
        from kernels.row_sdpa import row_sdpa

        def call() -> torch.Tensor:
            return row_sdpa(q, k, v, mask)
    else:
        kf, vf, mf = k[:, :, : a.filled], v[:, :, : a.filled], mask[:, : a.filled]

        def call() -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(
                q, kf, vf, attn_mask=mf, enable_gqa=True
            )

    for _ in range(a.calls):
        call()
    out = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.calls):
            call()
        out.append((time.perf_counter() - t0) / a.calls * 1e6)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--filled", type=int, default=450)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--rows", default="1,8,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--one", help=argparse.SUPPRESS)  # "op,rows": the child process
    a = p.parse_args()
    if a.one:
        op, rows = a.one.split(",")
        print(json.dumps(time_one(a, op, int(rows))))
        return
    child = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    print(
        f"{a.heads} query heads over {a.kv} kv heads of {a.dim}, {a.filled} of {a.length} "
        f"cache positions, {a.threads} threads; us per call, median of {a.rounds} rounds "
        f"of {a.calls} calls (min-max)"
    )
    print(f"{'rows':>4}  {'row_sdpa':>22}  {'torch sdpa':>22}  torch/row_sdpa")
    for rows in (int(r) for r in a.rows.split(",")):
        got = {}
        for op in OPS:
            r = subprocess.run(
                child + ["--one", f"{op},{rows}"], capture_output=True, text=True, check=True
            )
            got[op] = json.loads(r.stdout.strip().splitlines()[-1])
        cells = [
            f"{statistics.median(got[op]):7.1f} ({min(got[op]):.0f}-{max(got[op]):.0f})"
            for op in OPS
        ]
        ratio = statistics.median(got["torch_sdpa"]) / statistics.median(got["row_sdpa"])
        print(f"{rows:>4}  {cells[0]:>22}  {cells[1]:>22}  {ratio:.2f}x")


if __name__ == "__main__":
    main()
