"""Plain decoding against prompt-lookup speculation, side by side in one run.

The built-in model (or --model) answers an edit-this-text and a
summarise-this-text prompt, greedy, as a chat turn: once plainly and once
per --draft-k with prompt lookup, on the same loaded model (by default the
compiled package with a cache row, which `generate --speculate` runs; its
plain decoding runs through that package too). Prints decode tok/s (the
median of --rounds), the acceptance rate, the speed-up over plain decoding
of the same prompt, whether the ids are the same, and the CPU.

    tools/bazel run //torchchat:speculate_bench
    tools/bazel run //torchchat:speculate_bench -- --compile none --draft-k 4,8
    tools/bazel run //torchchat:speculate_bench -- --draft-k 7,auto   # fixed against adaptive k
    # a draft model: the built-in 4-bit GGUF drafting for its own weights in fp32
    tools/bazel run //torchchat:speculate_bench -- --dtype fp32 --draft smollm2 --draft-k 7
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from torchchat import loading
from torchchat.generate import Slot, Stats, argmax, decode
from torchchat.speculate import DEFAULT_DRAFT_K, AdaptiveK, DraftModel, PromptLookup

# Written for this benchmark: a paragraph with a few misspellings to fix.
TEXT = (
    "The lighthouse on the northern cape was built in 1871 by a team of stonemasons "
    "who sailed from the mainland every spring. Its lamp burned whale oil at frist, "
    "then kerosene, and finally electricity when a cable reached the island in 1952. "
    "The keepers kept a log of every ship that passed, the weather at dawn and dusk, "
    "and the number of birds that struck the glass during the autumn migration. In "
    "1987 the light was automated and the last keeper, a woman named Ingrid Solberg, "
    "moved to the village below, where she opened a small museum about the station. "
    "Today visitors can climb the 114 steps to the lantern room on weekends in summer, "
    "and the museum shows her logbooks, a model of the orginal lens, and photographs "
    "of the storm of 1913, when waves broke over the gallery rail."
)
PROMPTS = {
    "edit": "Fix the spelling mistakes in this text and return the whole text, otherwise "
    "unchanged:\n\n" + TEXT,
    "summarise": "Summarise this text in a few sentences:\n\n" + TEXT,
}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(slot: Slot, ids: list[int], steps: int) -> tuple[list[int], Stats]:
    stats = Stats()
    slot.truncate(0)  # every round prefills the whole prompt
    if isinstance(slot.draft, DraftModel):
        slot.draft.slot.truncate(0)  # and so does a draft model, within decode
    out = list(decode(slot, ids, argmax, steps, (), stats))
    return out, stats


def drafting(model: object, drafter: object, k: str) -> Slot:
    """A slot drafting `k` ids a step, or with k "auto" as --draft-k auto."""
    if k == "auto":
        return Slot(model, draft=drafter, draft_k=DEFAULT_DRAFT_K, adapt_k=AdaptiveK())  # type: ignore[arg-type]
    return Slot(model, draft=drafter, draft_k=int(k))  # type: ignore[arg-type]


def forward_ms(model: object, n: int, start: int = 256, reps: int = 20) -> float:
    """Median ms of one forward of n ids (every position's logits) at `start`."""
    import time

    tokens = torch.full((1, n), 100, dtype=torch.long)
    pos = torch.arange(start, start + n)
    times = []
    with torch.inference_mode():
        for _ in range(reps + 3):
            t = time.perf_counter()
            model.forward_all(tokens, pos)  # type: ignore[attr-defined]
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[3:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="alias or path (default: the built-in model)")
    p.add_argument("--compile", default="auto", choices=loading.COMPILE_MODES)
    p.add_argument("--dtype", choices=loading.DTYPE_CHOICES, help="the model's (see generate)")
    p.add_argument(
        "--draft", help="also draft with this model (alias or path), as generate --draft"
    )
    p.add_argument(
        "--draft-k", default="4,7,8,12", help="comma-separated k values, or auto (adaptive)"
    )
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    ks = args.draft_k.split(",")

    options = loading.LoadOptions(model=args.model, compile=args.compile, dtype=args.dtype)
    if loading.compile_mode(options) == "aoti":
        options = loading.LoadOptions(model=args.model, compile="aoti", dtype=args.dtype, slots=1)
    loaded = loading.load(options)
    model = loaded.ensure_model()
    drafter = None
    if args.draft:
        draft = loading.load(loading.LoadOptions(model=args.draft, compile=args.compile))
        vocab = getattr(model, "vocab_size", None) or model.config.vocab_size  # type: ignore[attr-defined]
        drafter = DraftModel(draft.ensure_model(), vocab)
        print(f"draft: {draft.info.get('checkpoint')} ({draft.info.get('compiled', 'eager')})")
    tok = loaded.tokenizer
    template = tok.template()
    assert template is not None, "the bench prompts are chat turns"
    threads = torch.get_num_threads()
    print(f"model: {loaded.info.get('checkpoint')} ({loaded.info.get('compiled', 'eager')})")
    # What a draft costs to verify: a forward of k + 1 ids against one of 1.
    one = forward_ms(model, 1)
    costs = {n: forward_ms(model, n) for n in (1, 2, 4, 5, 7, 8, 9, 12, 16)}
    print(
        "forward of n ids, ms (x one id): "
        + ", ".join(f"{n}: {ms:.1f} ({ms / one:.1f}x)" for n, ms in costs.items()),
        flush=True,
    )
    rows = []
    for name, text in PROMPTS.items():
        msgs = [{"role": "user", "content": text}]
        ids = tok.encode(template.render(msgs, add_generation_prompt=True), bos=False)
        runs: list[tuple[str, str, Slot]] = [("plain", "", Slot(model))]
        runs += [("prompt-lookup", k, drafting(model, PromptLookup(), k)) for k in ks]
        if drafter is not None:
            runs += [("draft model", k, drafting(model, drafter, k)) for k in ks]
        base_ids: list[int] | None = None
        base_speed = 0.0
        for mode, k, slot in runs:
            run(slot, ids, 8)  # warm-up
            speeds, rate, out = [], 0.0, []
            for _ in range(args.rounds):
                out, stats = run(slot, ids, args.max_new_tokens)
                speeds.append(stats.decode_tok_s)
                rate = stats.acceptance_rate
            speed = statistics.median(speeds)
            if base_ids is None:
                base_ids, base_speed = out, speed
            same = "yes" if out == base_ids else "NO"
            rows.append((name, mode, k, len(ids), len(out), speed, rate, speed / base_speed, same))
            print(
                f"{name:9} {mode:13} k={k} prompt {len(ids)} tok, {len(out)} generated: "
                f"{speed:.1f} tok/s, accepted {rate:.0%}, {speed / base_speed:.2f}x, same ids {same}",
                flush=True,
            )
    print()
    print("| prompt | decoding | k | decode tok/s | drafts accepted | speed-up | same ids |")
    print("|---|---|---|---|---|---|---|")
    for name, mode, k, _, _, speed, rate, up, same in rows:
        kk = str(k) if k else "-"
        acc = f"{rate:.0%}" if k else "-"
        print(f"| {name} | {mode} | {kk} | {speed:.1f} | {acc} | {up:.2f}x | {same} |")
    print(f"\nCPU: {cpu_model()}, {threads} threads (os.cpu_count {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
