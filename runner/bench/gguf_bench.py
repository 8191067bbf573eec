"""The GGUF files people download, side by side with llama.cpp, each runtime
in its own fresh process.

    tools/bazel run //runner/bench:gguf_bench -- FILE.gguf [FILE.gguf ...]
    tools/bazel run //runner/bench:gguf_bench -- --shape llama3.2-1b \\
        --types Q4_K_M,Q4_0,Q8_0,IQ4_XS,F16        # made by //runner/bench:real_files

For each file, in this order and never two at once:
  - `torchchat generate` with default flags, first with an empty compile
    cache (the first run: wall time to the end of a short answer, and its
    peak RSS), then warm: decode (median over prompts) and prefill of a
    256-token prompt, and the warm process's peak RSS;
  - llama.cpp through llama-cpp-python (built for this CPU), in a process
    of its own: the same prompts, its own timers (llama_perf_context);
  - llama.cpp's llama-bench, standalone: pp256 and tg64, the cross-check.
Peak RSS is each child's own (wait4). The roofline fraction is decode tok/s
times the bytes one token reads over a read-only bandwidth measured here.
Prints a markdown table per CPU kind; numbers compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNFILES = Path(os.path.abspath(__file__)).parent.parent.parent
PROMPTS = [
    "The sky is blue because",
    "Once upon a time, in a small village by the sea,",
    "A tokenizer splits text into",
]


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the CLI's launcher runs Python as a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _hwm(pid: int) -> int:
    """The process's peak RSS in bytes (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(
    cmd: list[str], env: dict | None = None, timeout: float = 3600, stdin: Path | None = None
) -> tuple:
    """(returncode, stdout, stderr, seconds, peak RSS bytes) of a fresh process.

    Peak RSS is the largest VmHWM in the child's process tree, polled: a
    forked child's ru_maxrss starts from this process's RSS at the fork
    (Linux copies the high-water mark), which would put this bench's own
    size, over 1 GB once torch has run, under every child's number."""
    t = time.perf_counter()
    peak = 0
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(stdin or os.devnull) as inp,
    ):
        p = subprocess.Popen(cmd, stdin=inp, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            peak = max([peak] + [_hwm(c) for c in _tree(p.pid)])
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, _ = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        secs = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        rc = os.waitstatus_to_exitcode(status)
        return rc, out.read().decode(), err.read().decode(), secs, peak


def cpu_kind() -> str:
    name, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if "amx_tile" in flags:
        kind = "AMX"
    elif "avx512_vnni" in flags:
        kind = "AVX-512 VNNI"
    elif "avx2" in flags:
        kind = "AVX2 only"
    else:
        kind = "no AVX2"
    return f"{name} ({kind})"


def read_bandwidth(mib: int = 1024, reps: int = 5, threads: int = 0) -> float:
    """GB/s of a read-only pass (a sum) over a buffer far larger than caches."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 2)
    a = torch.ones(mib * 2**20 // 4)
    a.sum()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best / 1e9


def bytes_per_token(path: Path) -> int:
    """What one decode step reads: every tensor once, except that an untied
    embedding table is read one row at a time."""
    from torchchat.checkpoint.gguf_file import GGUFFile

    tensors = GGUFFile(path).tensors
    total = 0
    for name, t in tensors.items():
        if name == "token_embd.weight" and "output.weight" in tensors:
            total += t.blocks.nbytes // t.shape[0]
        else:
            total += t.blocks.nbytes
    return total


def long_prompt(path: Path, tokens: int) -> str:
    from torchchat import tokenizer as tok_mod

    tok = tok_mod.load(path)
    ids = tok.encode(" ".join(PROMPTS * 400), bos=False)[: tokens - 1]
    return tok.decode(ids)


def torchchat(path: Path, prompt: str, n: int, env: dict, seq: int) -> dict:
    stats = Path(tempfile.mkdtemp()) / "stats.json"
    cmd = [str(RUNFILES / "cli" / "torchchat"), "generate", "--gguf-path", str(path)]
    cmd += ["--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0"]
    cmd += ["--max-seq-length", str(seq), "--stats-json", str(stats), "--quiet"]
    rc, _, err, secs, rss = run_child(cmd, env)
    if rc != 0:
        raise RuntimeError(f"torchchat failed: {err.strip().splitlines()[-1:]}")
    s = json.loads(stats.read_text())["answers"][-1]
    return {"decode": s["decode_tok_s"], "prefill": s["prefill_tok_s"], "rss": rss, "secs": secs}


_LLAMA_CPP_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import llama_cpp
path, seq, threads, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
prompts = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=path, n_ctx=seq, n_batch=512, n_threads=threads, verbose=False)
llm.create_completion(prompts[0], max_tokens=4, temperature=0)
out = []
for p in prompts:
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    max_tokens = n if p != prompts[-1] else 4
    for _ in llm.create_completion(p, max_tokens=max_tokens, temperature=0, stream=True):
        pass
    perf = llama_cpp.llama_perf_context(llm.ctx)
    out.append({
        "decode": perf.n_eval * 1e3 / perf.t_eval_ms if perf.t_eval_ms else 0.0,
        "prefill": perf.n_p_eval * 1e3 / perf.t_p_eval_ms if perf.t_p_eval_ms else 0.0,
    })
print(json.dumps(out))
"""


def llama_cpp_python(path: Path, prompts: list[str], n: int, seq: int, threads: int) -> dict:
    """llama.cpp in a fresh process of its own: the decode prompts, then the
    long one (last) for prefill."""
    from peers import llama_cpp

    pkg = llama_cpp.python_package()
    cmd = [sys.executable, "-c", _LLAMA_CPP_CHILD, str(pkg), str(path), str(seq), str(threads)]
    cmd.append(str(n))
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(prompts, f)
        f.flush()
        rc, out, err, secs, rss = run_child(cmd, stdin=Path(f.name))
    if rc != 0:
        raise RuntimeError(f"llama-cpp-python failed: {err.strip().splitlines()[-1:]}")
    rows = json.loads(out)
    return {
        "decode": statistics.median(r["decode"] for r in rows[:-1]),
        "prefill": rows[-1]["prefill"],
        "rss": rss,
        "secs": secs,
    }


def llama_bench(path: Path, prefill: int, n: int, threads: int) -> dict:
    from peers import llama_cpp

    exe = llama_cpp.build("llama-bench")
    cmd = [str(exe), "-m", str(path), "-p", str(prefill), "-n", str(n), "-t", str(threads)]
    cmd += ["-r", "3", "-o", "json"]
    rc, out, err, secs, rss = run_child(cmd)
    if rc != 0:
        raise RuntimeError(f"llama-bench failed: {err.strip().splitlines()[-1:]}")
    res = {"rss": rss, "secs": secs}
    for r in json.loads(out):
        if r.get("n_prompt"):
            res["prefill"] = r["avg_ts"]
        elif r.get("n_gen"):
            res["decode"] = r["avg_ts"]
    return res


def ggml_isa() -> str:
    from kernels.ggml import ops

    return ops.isa()


def bench_file(path: Path, args: argparse.Namespace, bandwidth: float) -> list[dict]:
    threads = args.threads or os.cpu_count() or 2
    long = long_prompt(path, args.prefill_tokens)
    seq = args.max_seq_length
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHCHAT_COMPILE_CACHE=cache)
        print(f"gguf_bench: {path.name}: torchchat, first run (compiles)", file=sys.stderr)
        first = torchchat(path, PROMPTS[0], 8, env, seq)
        print(f"gguf_bench: {path.name}: torchchat, warm", file=sys.stderr)
        decode = [torchchat(path, p, args.max_new_tokens, env, seq) for p in PROMPTS]
        pre = [torchchat(path, long, 2, env, seq) for _ in range(2)]
    tc = {
        "runtime": "torchchat generate (default)",
        "decode": statistics.median(d["decode"] for d in decode),
        "prefill": max(p["prefill"] for p in pre),
        "rss": max(d["rss"] for d in decode + pre),
        "first_s": first["secs"],
        "first_rss": first["rss"],
    }
    rows.append(tc)
    if not args.no_llama_cpp:
        print(f"gguf_bench: {path.name}: llama.cpp (llama-cpp-python)", file=sys.stderr)
        lp = llama_cpp_python(path, PROMPTS + [long], args.max_new_tokens, seq, threads)
        rows.append({"runtime": "llama.cpp (llama-cpp-python, own process)", **lp})
        print(f"gguf_bench: {path.name}: llama-bench", file=sys.stderr)
        lb = llama_bench(path, args.prefill_tokens, args.max_new_tokens, threads)
        rows.append({"runtime": "llama.cpp llama-bench (standalone)", **lb})
    nbytes = bytes_per_token(path)
    for r in rows:
        r["roofline"] = r.get("decode", 0.0) * nbytes / 1e9 / bandwidth
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="GGUF files")
    ap.add_argument("--shape", help="a //runner/bench:real_files shape, instead of files")
    ap.add_argument("--types", default="Q4_K_M,Q4_0,Q8_0,IQ4_XS,F16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    wd = Path(os.environ.get("BUILD_WORKING_DIRECTORY", "."))
    files = [Path(wd, f) for f in args.files]
    if args.shape:
        from runner.bench import real_files

        types = [t for t in args.types.split(",") if t]
        files += list(real_files.make(args.shape, types).values())
    if not files:
        sys.exit("gguf_bench: give GGUF files or --shape")
    bandwidth = read_bandwidth(threads=args.threads)
    results = {}
    for f in files:
        results[f.name] = bench_file(f, args, bandwidth)
    print(
        f"\nCPU: {cpu_kind()}; ggml kernels: {ggml_isa()}; {args.threads or os.cpu_count()} threads"
    )
    print(f"read bandwidth (sum over 1 GiB): {bandwidth:.1f} GB/s\n")
    print(
        "| file | runtime | decode tok/s | vs llama.cpp | prefill tok/s | vs llama.cpp | "
        "peak RSS MB | of roofline | first run s | first-run RSS MB |"
    )
    print("|---" * 10 + "|")
    for name, rows in results.items():
        peer = next((r for r in rows if "llama-cpp-python" in r["runtime"]), None)
        for r in rows:
            dec = f"{r['decode'] / peer['decode']:.2f}x" if peer and peer.get("decode") else "-"
            pre = f"{r['prefill'] / peer['prefill']:.2f}x" if peer and peer.get("prefill") else "-"
            first = f"{r['first_s']:.0f}" if "first_s" in r else "-"
            frss = f"{r['first_rss'] / 1e6:.0f}" if "first_rss" in r else "-"
            print(
                f"| {name} | {r['runtime']} | {r.get('decode', 0):.1f} | {dec} | "
                f"{r.get('prefill', 0):.1f} | {pre} | {r['rss'] / 1e6:.0f} | "
                f"{r['roofline']:.2f} | {first} | {frss} |"
            )
    if args.json:
        Path(wd, args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
