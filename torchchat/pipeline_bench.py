"""--pipeline-parallel against one process on the same model: each rank's
peak RSS (VmHWM) and what it holds, and tok/s; and gloo's message costs
over loopback, which decide what tensor parallelism would cost here.

    tools/bazel run //torchchat:pipeline_bench -- --ranks 2

Every measurement runs in a fresh process (peak RSS starts from nothing):
a process that only imports what loading imports (the floor every rank
pays), the model in one process, and the pipeline (launch_local: ranks on
this host, 127.0.0.1). Eager (--compile none) in both, the GGUF in its own
formats; one process uses every core, each of N local ranks 1/N of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

MIB = 1 << 20
TEXT = (
    "The lighthouse stood on the northern cape for more than a century. Its keepers "
    "logged every ship that passed, the weather at dawn and dusk, and the oil the lamp "
    "burned each night. When the light was automated, the logs went to the town library, "
    "where they fill a whole shelf and are read mostly by people tracing their families. "
)


def _options(args: argparse.Namespace, ranks: int, microbatch: int) -> Any:
    from torchchat import loading

    return loading.LoadOptions(
        model=args.model,
        compile="none",
        max_seq_length=args.max_seq_length,
        pipeline=ranks,
        pipeline_microbatch=microbatch,
        quiet=True,
    )


def _generate(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    from torchchat.generate import Slot, Stats, argmax, decode

    ids = tokenizer.encode(TEXT * 8, bos=False)[: args.prompt_tokens]
    decode_rates, prefill_rates = [], []
    for _ in range(args.rounds):
        stats = Stats()
        for _ in decode(Slot(model), ids, argmax, args.new_tokens, (), stats):
            pass
        decode_rates.append(stats.decode_tok_s)
        prefill_rates.append(stats.prefill_tok_s)
    return {
        "prefill_tok_s": sorted(prefill_rates)[len(prefill_rates) // 2],
        "decode_tok_s": sorted(decode_rates)[len(decode_rates) // 2],
    }


def child_floor(args: argparse.Namespace) -> dict[str, Any]:
    """What every rank pays before a model: the imports, the checkpoint's
    header and the tokenizer."""
    from kernels.ggml import ops  # noqa: F401
    from torchchat import checkpoint, loading, pipeline

    source = loading.resolve_source(_options(args, 0, 0))
    ckpt = checkpoint.load_checkpoint(source.checkpoint, stage=lambda n: range(0, 0))
    loading.load_tokenizer(loading.tokenizer_source(ckpt))
    return {"peak_rss_bytes": pipeline.vm_hwm_bytes()}


def child_single(args: argparse.Namespace) -> dict[str, Any]:
    from torchchat import loading, pipeline

    loaded = loading.load(_options(args, 0, 0))
    out = _generate(loaded.model, loaded.tokenizer, args)
    weights, cache, other = pipeline.held_bytes(loaded.model)
    out.update(
        weight_bytes=weights,
        kv_cache_bytes=cache,
        buffer_bytes=other,
        peak_rss_bytes=pipeline.vm_hwm_bytes(),
    )
    return out


def child_pipeline(args: argparse.Namespace, microbatch: int) -> dict[str, Any]:
    from torchchat import loading, pipeline

    options = _options(args, args.ranks, microbatch)
    rank, procs = pipeline.launch_local(args.ranks, functools.partial(loading.serve_stage, options))
    try:
        loaded = loading.load(options)
        out = _generate(loaded.model, loaded.tokenizer, args)
    finally:
        out_ranks = pipeline.shutdown(rank)
        for p in procs:
            p.join(60)
    out["ranks"] = out_ranks
    return out


def _messages(n: int, dim: int) -> dict[str, float]:
    """Microseconds per all_reduce and per hop, between 2 ranks (rank 1 is
    launch_local's target)."""
    import torch
    import torch.distributed as dist

    from torchchat import pipeline

    rank = pipeline.join(2)
    x = torch.randn(1, 1, dim)
    out: dict[str, float] = {}
    for name in ("all_reduce", "send_recv"):
        for i in range(n + 10):
            if i == 10:  # after a warm-up
                dist.barrier()
                start = time.perf_counter()
            if name == "all_reduce":
                dist.all_reduce(x)
            elif rank.first:  # a hidden state to rank 1 and back: one hop each way
                dist.send(x, 1)
                dist.recv(x, 1)
            else:
                dist.recv(x, 0)
                dist.send(x, 0)
        out[name] = (time.perf_counter() - start) / n * 1e6
    out["send_recv"] /= 2  # per hop
    if not rank.first:
        pipeline.close_group()
    return out


def child_messages(args: argparse.Namespace) -> dict[str, Any]:
    from torchchat import pipeline

    rank, procs = pipeline.launch_local(2, functools.partial(_messages, 2000, args.dim))
    try:
        out = _messages(2000, args.dim)
    finally:
        pipeline.close_group()
        for p in procs:
            p.join(60)
    return {"us": out}


def _run_child(role: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torchchat.pipeline_bench", "--child", role, *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{role} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="alias or path (default: the built-in model)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dim", type=int, default=576, help="hidden size for the message costs")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.child:
        if args.child.startswith("pipeline"):
            out = child_pipeline(args, int(args.child.split(":")[1]))
        else:
            out = {"floor": child_floor, "single": child_single, "messages": child_messages}[
                args.child
            ](args)
        print(json.dumps(out))
        return 0
    argv = sys.argv[1:]
    cpu = _cpu_name()
    print(
        f"{cpu} ({_isa()}), {len(os.sched_getaffinity(0))} cores; eager, "
        f"{args.prompt_tokens}-token "
        f"prompt, {args.new_tokens} greedy tokens, context {args.max_seq_length}, "
        f"median of {args.rounds}"
    )
    floor = _run_child("floor", argv)["peak_rss_bytes"]
    single = _run_child("single", argv)
    piped = {mb: _run_child(f"pipeline:{mb}", argv) for mb in (32, 0)}
    print(f"\nfloor (imports, no model): peak RSS {floor / MIB:.0f} MiB\n")
    print(
        "| run | rank | layers | weights MiB | KV cache MiB | masks MiB | peak RSS MiB "
        "| above floor MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    n_layers = None
    for r in piped[32]["ranks"]:
        n_layers = r["layers"][1]
    print(
        f"| one process | - | 0-{(n_layers or 1) - 1} | {single['weight_bytes'] / MIB:.1f} | "
        f"{single['kv_cache_bytes'] / MIB:.1f} | {single['buffer_bytes'] / MIB:.1f} | "
        f"{single['peak_rss_bytes'] / MIB:.0f} | "
        f"{(single['peak_rss_bytes'] - floor) / MIB:.0f} |"
    )
    for r in piped[32]["ranks"]:
        print(
            f"| pipeline {args.ranks} | {r['rank']} | {r['layers'][0]}-{r['layers'][1] - 1} | "
            f"{r['weight_bytes'] / MIB:.1f} | {r['kv_cache_bytes'] / MIB:.1f} | "
            f"{r['buffer_bytes'] / MIB:.1f} | {r['peak_rss_bytes'] / MIB:.0f} | "
            f"{(r['peak_rss_bytes'] - floor) / MIB:.0f} |"
        )
    print("\n| run | prefill tok/s | decode tok/s |")
    print("|---|---|---|")
    print(f"| one process | {single['prefill_tok_s']:.1f} | {single['decode_tok_s']:.1f} |")
    for mb, out in piped.items():
        how = f"micro-batches of {mb}" if mb else "whole prompt"
        print(
            f"| pipeline {args.ranks}, {how} | {out['prefill_tok_s']:.1f} | "
            f"{out['decode_tok_s']:.1f} |"
        )
    msg = _run_child("messages", argv)["us"]
    print(
        f"\ngloo over loopback, [1, {args.dim}] fp32: all_reduce {msg['all_reduce']:.0f} us, "
        f"one send/recv hop {msg['send_recv']:.0f} us"
    )
    return 0


def _isa() -> str:
    """The kernels' widest instruction set on this CPU."""
    with open("/proc/cpuinfo") as f:
        flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    return "AVX2" if "avx2" in flags else "no AVX2"


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
