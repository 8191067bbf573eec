"""The anchor check: our eager model against llama.cpp's llama-perplexity on
the same GGUF, text, context and stride, and on the same HellaSwag items.

    tools/bazel run //evals:anchor -- [--gguf-path X.gguf] [--text FILE]
        [--ctx 512] [--stride 0] [--chunks N] [--hellaswag N]

Perplexity uses llama.cpp's window rule (evals/perplexity.py) so both score
the same tokens. HellaSwag is scored both ways on the same first N items:
llama.cpp's metric (the ending's mean log-probability per token, after
the four sequences' common prefix, context + " " + ending tokenized
whole), computed from our model, and lm-eval's acc/acc_norm.
llama-perplexity is built into the user cache on first use (peers/llama_cpp.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals import data as data_mod
from evals import harness, perplexity
from evals.scoring import CachedScorer, Group, PackedScorer, Scorer, one_token_at_a_time
from peers import llama_cpp
from torchchat import loading
from torchchat.model import Model
from torchchat.paths import user_path


def llama_cpp_style_hellaswag(scorer: Scorer, tok: Any, docs: list[dict]) -> float:
    """llama.cpp's hellaswag_score on our model: tokenize context + " " +
    ending whole, split off the common prefix, and pick the ending with
    the highest mean log-probability per token."""
    bos = [tok.bos_id] if tok.add_bos else []
    groups = []
    for d in docs:
        seqs = [bos + tok.encode(d["query"] + " " + c, bos=False) for c in d["choices"]]
        k = 0
        while all(k < len(s) - 1 for s in seqs) and len({s[k] for s in seqs}) == 1:
            k += 1
        groups.append(Group(seqs[0][:k], [s[k:] for s in seqs]))
    right = 0
    for d, scores in zip(docs, scorer.score(groups)):
        means = [math.fsum(s.logprobs) / len(s.logprobs) for s in scores]
        right += means.index(max(means)) == d["label"]
    return right / len(docs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anchor", description=__doc__.splitlines()[0])
    p.add_argument("--gguf-path", help="default: the built-in model's GGUF")
    p.add_argument("--text", help="default: LAMBADA's test passages")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--stride", type=int, default=0, help="llama-perplexity --ppl-stride")
    p.add_argument("--chunks", type=int, help="only the first N windows (llama's --chunks)")
    p.add_argument("--hellaswag", type=int, default=400, help="items (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--decode",
        action="store_true",
        help="score one token at a time through the KV cache, as generation decodes (a GGUF's "
        "8-bit activations), not in packed prefill forwards; slower: use --chunks",
    )
    p.add_argument("--output-json")
    args = p.parse_args(argv)

    from torchchat import registry

    gguf = user_path(args.gguf_path) or registry.checkpoint_path(
        registry.resolve(registry.DEFAULT_MODEL)
    )
    binary = llama_cpp.build()
    data = data_mod.data_dir()
    text = user_path(args.text) or data / data_mod.DEFAULT_TEXT
    loaded = loading.load(loading.LoadOptions(checkpoint=gguf, max_seq_length=2048, compile="none"))
    model = loaded.ensure_model()
    assert isinstance(model, Model), "compile none loads an eager Model"
    scorer: Any = (
        CachedScorer(one_token_at_a_time(model), loaded.max_seq_length)
        if args.decode
        else PackedScorer(model, batch_tokens=max(1024, args.ctx))
    )
    out: dict[str, Any] = {
        "gguf": str(gguf),
        "text": str(text),
        "ctx": args.ctx,
        "stride": args.stride,
        "scoring": "decode" if args.decode else "packed prefill",
    }

    # -- perplexity --
    chunks = ["--chunks", str(args.chunks)] if args.chunks else []
    stride = ["--ppl-stride", str(args.stride)] if args.stride else []
    ll = llama_cpp.run(
        binary,
        gguf,
        ["-f", str(text), "-c", str(args.ctx), "-b", str(args.ctx), *stride, *chunks],
        args.threads,
    )
    # With a stride, llama-perplexity widens its context by stride/2.
    window = args.ctx + args.stride // 2 if args.stride else args.ctx
    t = time.perf_counter()
    ours = perplexity.evaluate(
        scorer, loaded.tokenizer, text.read_text(), window, args.stride, "llama.cpp", args.chunks
    )
    ours_s = time.perf_counter() - t
    out["ppl"] = {
        "llama.cpp": ll.perplexity,
        "ours": ours.perplexity,
        "ratio": ours.perplexity / ll.perplexity if ll.perplexity else None,
        "windows": ours.windows,
        "tokens_scored": ours.tokens,
        "llama.cpp_tokens": ll.tokens,
        "llama.cpp_seconds": ll.seconds,
        "ours_seconds": ours_s,
        "ours_tok_s": ours.tok_s,
        "llama.cpp_tok_s": ours.tokens_run / ll.seconds,
    }
    print(
        f"ppl  llama.cpp {ll.perplexity:.4f}  ours {ours.perplexity:.4f}  "
        f"(ratio {out['ppl']['ratio']:.5f}; {ours.windows} windows of {window}, {ours.tokens} tokens scored); "
        f"time: llama.cpp {ll.seconds:.1f} s (whole command), ours {ours_s:.1f} s (scoring)",
        flush=True,
    )

    # -- HellaSwag on the same items --
    if args.hellaswag:
        docs = list(data_mod.read_jsonl(data / "hellaswag.jsonl"))[: args.hellaswag]
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "hellaswag.txt"
            llama_cpp.hellaswag_file(docs, f)
            hs = llama_cpp.run(
                binary,
                gguf,
                ["-f", str(f), "--hellaswag", "--hellaswag-tasks", str(len(docs)), "-c", "2048"],
                args.threads,
            )
        t = time.perf_counter()
        mine = llama_cpp_style_hellaswag(scorer, loaded.tokenizer, docs)
        mine_s = time.perf_counter() - t
        lm = harness.make_lm(scorer, loaded.tokenizer)
        lm_eval = harness.run_tasks(lm, ["hellaswag"], data, len(docs))["hellaswag"]
        out["hellaswag"] = {
            "items": len(docs),
            "llama.cpp": hs.hellaswag,
            "ours_llama_cpp_metric": mine,
            "ours_lm_eval": lm_eval,
            "llama.cpp_seconds": hs.seconds,
            "ours_seconds": mine_s,
        }
        print(
            f"hellaswag ({len(docs)} items)  llama.cpp {hs.hellaswag:.4f}  ours (llama.cpp's metric) {mine:.4f}  "
            f"ours (lm-eval) acc {lm_eval['acc']:.4f} acc_norm {lm_eval['acc_norm']:.4f}; "
            f"time: llama.cpp {hs.seconds:.1f} s, ours {mine_s:.1f} s",
            flush=True,
        )
    if args.output_json:
        user_path(args.output_json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
