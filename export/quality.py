"""Top-1 agreement of a quantized model with the fp32 eager model.

    quality [MODEL] --artifact out/model.pte      # or .pt2
    quality [MODEL] --et-quantize '<json>'        # ET's transforms, in eager

The fp32 model greedily continues a fixed prompt set; the candidate is then
fed the same sequences (teacher forcing) and scored on how often its argmax
equals the fp32 model's at every generated position. The quality bar for a
quantized export is >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from torchchat.generate import LLMModel, Slot, Stats, argmax, decode, greedy
from torchchat.paths import user_path

if TYPE_CHECKING:
    from torchchat.model import Model

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans",
    "To make a cup of tea, you",
    "The largest planet in the solar system",
]
STEPS = 32


def reference(
    model: LLMModel, prompts: Sequence[list[int]], steps: int = STEPS
) -> list[tuple[list[int], int]]:
    """(prompt + greedy continuation, number of prompt tokens) per prompt."""
    return [(list(ids) + greedy(model, ids, steps), len(ids)) for ids in prompts]


@torch.no_grad()
def agreement(model: LLMModel, sequences: Sequence[tuple[list[int], int]]) -> float:
    """Fraction of positions where the candidate's argmax is the reference
    token, feeding the candidate the reference sequence (teacher forcing)."""
    hit = total = 0
    for seq, n in sequences:
        slot = Slot(model)
        logits = slot.prefill(seq[:n])
        for i in range(n, len(seq)):
            hit += int(argmax(logits) == seq[i])
            total += 1
            logits = slot.step(seq[i])
    return hit / total


def decode_speed(model: LLMModel, prompt: list[int], steps: int = 64) -> float:
    """Greedy decode tokens per second after the prompt's prefill."""
    stats = Stats()
    for _ in decode(Slot(model), prompt, argmax, steps + 1, stats=stats):
        pass
    return stats.decode_tok_s


def et_quantized_eager(model: Model, spec: str | dict[str, Any], dtype_name: str = "fp32") -> Model:
    """The eager model after ExecuTorch's own quantization source transforms."""
    from executorch.extension.llm.export.builder import DType

    from export import pte, quant

    q = quant.for_executorch(quant.parse(spec))
    for t in pte.et_quant_transforms(q, DType(dtype_name)):
        model = t(model)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    from export.source import build, checkpoint_of, load_source
    from torchchat import artifacts, loading

    p = argparse.ArgumentParser(prog="quality")
    loading.add_source_args(p, artifacts=False)
    p.add_argument("--artifact", help="a .pte or .pt2 to score")
    p.add_argument(
        "--et-quantize",
        action="append",
        default=[],
        help="score ExecuTorch's quantization transforms in eager (repeatable)",
    )
    p.add_argument("--max-seq-length", type=int, default=256)
    args = p.parse_args(argv)
    options = loading.source_options(args)
    source = load_source(checkpoint_of(options), options.tokenizer)
    prompts = [source.tokenizer.encode(t) for t in PROMPTS]
    fp32 = build(source, "fp32", args.max_seq_length)
    seqs = reference(fp32, prompts)
    results = {}
    if args.artifact:
        m = artifacts.load(user_path(args.artifact))
        t = time.perf_counter()
        results[args.artifact] = agreement(m, seqs)
        print(f"{args.artifact}: {results[args.artifact]:.3f} ({time.perf_counter() - t:.1f} s)")
        speed = decode_speed(m, prompts[0])
        results["decode_tok_s"] = speed
        print(f"{args.artifact}: decode {speed:.1f} tok/s", flush=True)
    for spec in args.et_quantize:
        model = et_quantized_eager(build(source, "fp32", args.max_seq_length), spec)
        results[spec] = agreement(model, seqs)
        print(f"{spec}: {results[spec]:.3f}", flush=True)
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
