"""The speculative-decoding flags that generate, chat and the server share
(--speculate, --draft, --draft-k), and loading --draft's model: each command
takes the same flags with the same checks and one-line errors."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from torchchat import loading
from torchchat.errors import UserError
from torchchat.generate import AdaptK
from torchchat.paths import user_path
from torchchat.speculate import ADAPTIVE_K_RANGE, DEFAULT_DRAFT_K, SPECULATE_MODES, AdaptiveK

# Text whose ids two tokenizers must agree on for one to draft for the other.
TOKENIZER_PROBE = "Hello, world! Speculative decoding: 1234 ids, <tag> and\n\tthe end."


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--speculate",
        choices=SPECULATE_MODES,
        help="speculative decoding: prompt-lookup guesses the next ids from earlier text "
        "(prompt and reply), draft asks --draft's model; the model checks the guesses in one "
        "forward, and the output is unchanged",
    )
    p.add_argument(
        "--draft",
        metavar="MODEL",
        help="a model with the same tokenizer that drafts for --speculate draft (an alias, "
        "a checkpoint or a .gguf; implies --speculate draft)",
    )
    lo, hi = ADAPTIVE_K_RANGE
    p.add_argument(
        "--draft-k",
        default=str(DEFAULT_DRAFT_K),
        metavar="K|auto",
        help=f"ids guessed per forward with --speculate (default {DEFAULT_DRAFT_K}); auto starts "
        f"at {DEFAULT_DRAFT_K} and adapts per generation within {lo}..{hi} (two more after a "
        "draft kept whole, one fewer after one mostly rejected)",
    )


def mode(args: argparse.Namespace) -> str | None:
    """The --speculate mode, with --draft alone meaning `draft`."""
    m = args.speculate or ("draft" if args.draft else None)
    if args.draft and m != "draft":
        raise UserError(f"--draft drafts for --speculate draft, not {m}")
    if m == "draft" and not args.draft:
        raise UserError("--speculate draft needs --draft MODEL")
    return m


def draft_k(args: argparse.Namespace) -> tuple[int, AdaptK | None]:
    """--draft-k as (the first draft's length, its AdaptiveK or None)."""
    if args.draft_k == "auto":
        return DEFAULT_DRAFT_K, AdaptiveK()
    try:
        k = int(args.draft_k)
    except ValueError:
        raise UserError(f"--draft-k must be a number or auto, not {args.draft_k!r}") from None
    if k < 1:
        raise UserError("--draft-k must be at least 1")
    return k, None


def vocab_size(model: Any) -> int:
    # The eager model names its vocabulary in its config, an artifact itself.
    return model.config.vocab_size if hasattr(model, "config") else model.vocab_size


def load_draft(
    args: argparse.Namespace, loaded: loading.Loaded, **overrides: Any
) -> loading.Loaded:
    """--draft's model, loaded as the target is (its compile mode, context
    and device, and `overrides` of LoadOptions' fields), refused unless its
    tokenizer gives the same ids."""
    path = user_path(args.draft)
    options = loading.LoadOptions(
        model=str(path) if path is not None and path.exists() else args.draft,
        compile=args.compile,
        max_seq_length=args.max_seq_length,
        device=args.device,
        quiet=args.quiet,
    )
    draft = loading.load(replace(options, **overrides))
    mine, theirs = loaded.tokenizer, draft.tokenizer
    if mine.encode(TOKENIZER_PROBE, bos=False) != theirs.encode(TOKENIZER_PROBE, bos=False):
        raise UserError(f"--draft {args.draft}: its tokenizer differs from the model's")
    return draft


def check_verifies(model: Any) -> None:
    """Raises UserError unless `model` gives every position's logits (what
    a draft is verified with)."""
    import torch

    from torchchat.artifacts import ArtifactError

    try:
        # A probe at positions 0-1, which the first prompt overwrites.
        model.forward_all(torch.tensor([[0, 0]]), torch.tensor([0, 1]))
    except (AttributeError, ArtifactError) as e:
        raise UserError(
            f"--speculate needs every position's logits, which this model does not give ({e}); "
            "export it with --slots or --full-logits"
        ) from None
