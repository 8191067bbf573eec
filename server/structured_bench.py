"""What a JSON Schema costs per token, against unconstrained decoding, in one run.

    tools/bazel run //server:structured_bench -- [--compile none] [--slots 1,8]

Builds the server's engine in-process (generate's model flags; default the
built-in model) and, for each slot count N, runs N concurrent generations
of `--max-tokens` tokens, greedy, three ways: unconstrained (`ignore_eos`),
held to a JSON Schema whose answers are longer than `--max-tokens` (so
every generation runs to the same length), and the same with the mask
computed after the forward instead of during it, the three taking turns
in each round. It prints the mean time
per token after the first (each stream's decode time over its tokens) and
the overhead against unconstrained, with the CPU it ran on.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys

from server import main as server_main
from server.engine import Done, Engine, Failed, Params
from torchchat import grammar

# Strings in an array of at least 60: longer than any --max-tokens here, so
# no answer ends early and each mode decodes the same number of tokens.
SCHEMA = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 16},
    "minItems": 60,
}
PROMPTS = [
    "A JSON list of fruit names: ",
    "Cities of Europe, as a JSON array: ",
    "Some colours in JSON: ",
    "A JSON array of animal names: ",
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


async def _run(engine: Engine, prompts: list[list[int]], params: Params) -> list[float]:
    """Each stream's ms per token after the first."""
    sink: asyncio.Queue = asyncio.Queue()
    engine.admit(len(prompts))
    tasks = [engine.start(ids, params, sink, i) for i, ids in enumerate(prompts)]
    out = []
    left = len(prompts)
    while left:
        _, ev = await sink.get()
        if isinstance(ev, Failed):
            raise RuntimeError(ev.message)
        if isinstance(ev, Done):
            left -= 1
            s = ev.stats
            out.append((s.inference_end_ms - s.first_token_ms) / (s.num_generated_tokens - 1))
    await asyncio.gather(*tasks)
    # A slot is free again once its worker thread returns, on this loop.
    while engine.busy():
        await asyncio.sleep(0.001)
    return out


async def measure(
    engine: Engine, prompts: list[list[int]], modes: list[tuple[Params, bool]], rounds: int
) -> list[float]:
    """Each mode's (params, mask overlapped) median ms per token. The modes
    take turns within each round, so that a host that slows down for a while
    slows every mode alike."""
    times: list[list[float]] = [[] for _ in modes]
    for r in range(rounds + 1):  # round 0 warms up (and builds the grammar's table)
        for k, (params, overlap) in enumerate(modes):
            grammar.Guided.overlap = overlap
            try:
                t = statistics.mean(await _run(engine, prompts, params))
            finally:
                grammar.Guided.overlap = True
            if r:
                times[k].append(t)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = server_main.build_parser()
    p.add_argument("--slots", default="1,8", help="concurrent generations to measure")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    counts = [int(x) for x in args.slots.split(",")]
    args.parallel = max(counts)
    args.quiet = True
    engine, config = server_main.build(args)
    assert isinstance(engine, Engine)
    tok = engine.tokenizer
    g = grammar.json_schema(SCHEMA)
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores")
    print(
        f"model: {server_main.model_id(args)}, compile: {args.compile}, vocabulary: {config.vocab_size}"
    )
    print(
        f"{args.max_tokens} tokens a stream, greedy, median of {args.rounds} rounds, the modes taking turns\n"
    )
    print(
        "| slots | unconstrained ms/token | JSON Schema ms/token | overhead | mask after forward ms/token | overhead |"
    )
    print("|---|---|---|---|---|---|")
    for n in counts:
        prompts = [tok.encode(PROMPTS[i % len(PROMPTS)], bos=tok.add_bos) for i in range(n)]
        base = Params(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        held = Params(max_tokens=args.max_tokens, temperature=0.0, grammar=g)
        modes = [(base, True), (held, True), (held, False)]
        # One event loop for the whole run, as in the server.
        plain, overlapped, serial = asyncio.run(measure(engine, prompts, modes, args.rounds))
        print(
            f"| {n} | {plain:.2f} | {overlapped:.2f} | {100 * (overlapped / plain - 1):+.1f}% "
            f"| {serial:.2f} | {100 * (serial / plain - 1):+.1f}% |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
