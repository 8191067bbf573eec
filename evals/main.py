"""`torchchat eval`: perplexity and multiple-choice benchmarks.

Takes generate's model flags (an alias, --gguf-path, --checkpoint-path,
--quantize, --dtype, --pte-path, --aoti-package-path), so the same command
scores eager fp32, an eager quantization, a .pt2 and a .pte. Errors a user
can cause print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchchat import loading
from torchchat.errors import EXIT_ERROR, EXIT_INTERRUPT, UserError
from torchchat.paths import user_path

PPL = "ppl"
DEFAULT_WINDOW = 512


def build_parser() -> argparse.ArgumentParser:
    from evals.harness import TASKS

    p = argparse.ArgumentParser(prog="torchchat eval", description=__doc__.splitlines()[0])
    loading.add_model_args(p)
    p.add_argument(
        "--tasks",
        default=PPL,
        help=f"comma-separated: {', '.join((PPL,) + TASKS)} (default {PPL})",
    )
    p.add_argument("--limit", type=int, help="at most N items per task (windows for ppl)")
    p.add_argument(
        "--text",
        help="the text for ppl (default: LAMBADA's test passages, fetched with the task data)",
    )
    p.add_argument(
        "--window",
        type=int,
        help=f"ppl: tokens per window (default min({DEFAULT_WINDOW}, --max-seq-length))",
    )
    p.add_argument(
        "--stride",
        type=int,
        help="ppl: tokens between window starts (default window/2; 0 with --window-rule "
        "llama.cpp: its disjoint chunks)",
    )
    p.add_argument(
        "--window-rule",
        choices=["lm-eval", "llama.cpp"],
        default="lm-eval",
        help="ppl: which tokens each window scores (evals/perplexity.py)",
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=1024,
        help="eager: positions per batched forward (windows and choices packed together)",
    )
    p.add_argument("--output-json", help="also write the results to this JSON file")
    return p


def _check_args(args: argparse.Namespace) -> list[str]:
    from evals.harness import TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    known = (PPL,) + TASKS
    for t in tasks:
        if t not in known:
            raise UserError(f"unknown task {t!r} (known: {', '.join(known)})")
    if not tasks:
        raise UserError(f"--tasks names no task (known: {', '.join(known)})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.batch_tokens < 1:
        raise UserError("--batch-tokens must be at least 1")
    if args.window is not None and args.window < 2:
        raise UserError("--window must be at least 2")
    if args.stride is not None and args.stride < 0:
        raise UserError("--stride must not be negative")
    if args.stride == 0 and args.window_rule != "llama.cpp":
        raise UserError("--stride 0 is llama.cpp's chunking; add --window-rule llama.cpp")
    if args.text is not None and PPL not in tasks:
        raise UserError(f"--text is for the {PPL} task; add it to --tasks")
    if args.compile in ("aoti", "torch"):
        raise UserError(
            "eval runs the eager model (batched, every position's logits); to score a "
            "compiled model, export a .pt2 with export_llm --full-logits and pass "
            "--aoti-package-path"
        )
    return tasks


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"--text {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--text {path} is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"--text {path} is empty")
    return text


def _progress(desc: str) -> Callable[[int, int], Callable[[int], None]]:
    """A tqdm bar in tokens (rate and ETA) for each scoring call."""

    def make(total: int, groups: int) -> Callable[[int], None]:
        from tqdm import tqdm

        bar = tqdm(
            total=total, desc=desc, unit="tok", unit_scale=True, file=sys.stderr, leave=False
        )

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return update

    return make


def _scorer(loaded: loading.Loaded, batch_tokens: int) -> Any:
    from evals.scoring import CachedScorer, PackedScorer
    from torchchat.artifacts import ArtifactError, ExportedModel
    from torchchat.model import Model

    model = loaded.ensure_model()
    if isinstance(model, ExportedModel):
        import torch

        try:  # refuse an artifact without full logits before any data is read
            model.forward_all(torch.tensor([[0, 0]]), torch.tensor([0, 1]))
        except ArtifactError as e:
            raise UserError(str(e)) from None
        return CachedScorer(model.forward_all, model.max_seq_length)
    if not isinstance(model, Model):
        raise UserError(f"eval cannot score a {type(model).__name__}")
    return PackedScorer(model, batch_tokens)


def _eval_data() -> Path:
    """The prepared eval data (made on first use, then found)."""
    from evals import data as data_mod

    try:
        return data_mod.data_dir()
    except data_mod.DataError as e:
        raise UserError(str(e)) from None


def _ppl(
    args: argparse.Namespace, scorer: Any, loaded: loading.Loaded, data: Path | None
) -> dict[str, Any]:
    """Perplexity over --text, else over the eval data's default text."""
    from evals import data as data_mod
    from evals import perplexity

    if args.text:
        path = user_path(args.text)
    else:
        assert data is not None
        path = data / data_mod.DEFAULT_TEXT
    text = _read_text(path)
    window = args.window or min(DEFAULT_WINDOW, scorer.max_seq_length)
    if window > scorer.max_seq_length:
        raise UserError(
            f"--window {window} is longer than the model's context {scorer.max_seq_length} "
            "(raise --max-seq-length or lower --window)"
        )
    stride = window // 2 if args.stride is None else args.stride
    if stride >= window:
        raise UserError(f"--stride {stride} must be shorter than --window {window}")
    try:
        r = perplexity.evaluate(
            scorer,
            loaded.tokenizer,
            text,
            window,
            stride,
            args.window_rule,
            args.limit,
            _progress(PPL),
        )
    except perplexity.PerplexityError as e:
        raise UserError(f"{path.name}: {e}") from None
    return {
        "text": str(path),
        "perplexity": r.perplexity,
        "bits_per_byte": r.bits_per_byte,
        "tokens_scored": r.tokens,
        "windows": r.windows,
        "window": window,
        "stride": stride,
        "window_rule": args.window_rule,
        "seconds": r.seconds,
        "tok_s": r.tok_s,
    }


def _print(results: dict[str, dict[str, Any]]) -> None:
    if PPL in results:
        r = results[PPL]
        print(
            f"ppl  {Path(r['text']).name}: perplexity {r['perplexity']:.4f}, bits/byte "
            f"{r['bits_per_byte']:.4f}, {r['tokens_scored']} tokens scored in {r['windows']} "
            f"windows of {r['window']} (stride {r['stride']}, {r['window_rule']} rule), "
            f"{r['tok_s']:.0f} tok/s"
        )
    for task, r in results.items():
        if task == PPL:
            continue
        parts = [f"{task:<14} n={r['n']:<6}"]
        for m in ("acc", "acc_norm"):
            if m in r:
                err = r.get(f"{m}_stderr")
                parts.append(
                    f"{m} {r[m]:.4f}" + (f" ± {err:.4f}" if isinstance(err, float) else "")
                )
        print("  ".join(parts))


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from evals import harness

    tasks = _check_args(args)
    if args.text:
        _read_text(user_path(args.text))  # before minutes of loading
    loaded = loading.load(loading.options_from_args(args, compile="none"))
    scorer = _scorer(loaded, args.batch_tokens)
    mc = [t for t in tasks if t != PPL]
    # Prepared (or refused) once, before minutes of scoring.
    data = _eval_data() if mc or (PPL in tasks and not args.text) else None
    results: dict[str, dict[str, Any]] = {}
    if PPL in tasks:
        results[PPL] = _ppl(args, scorer, loaded, data)
    if mc:
        assert data is not None
        lm = harness.make_lm(scorer, loaded.tokenizer, _progress("tasks"))
        results.update(harness.run_tasks(lm, mc, data, args.limit))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    # As the CLI: torchao's pytree registration warns about our dependencies.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        results = run(args)
    except loading.expected_errors() as e:
        print(f"torchchat eval: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    _print(results)
    if args.output_json:
        path = user_path(args.output_json)
        path.write_text(json.dumps(results, indent=2) + "\n")
    return 0
