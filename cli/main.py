"""torchchat command line: generate, chat, server, serve-cluster, eval, list, where, download, remove.

The top of the house: it parses flags and hands each command to the module
that does the work (torchchat.loading and torchchat.generate, the server,
eval). Command names and flags follow upstream torchchat. Errors a user can
cause (an unknown alias, a missing or corrupt checkpoint, a prompt longer
than the context, bad --quantize JSON) print one line and exit 1; Ctrl-C
stops generation and exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from torchchat import loading
from torchchat.errors import EXIT_ERROR, EXIT_INTERRUPT, UserError
from torchchat.paths import user_path
from torchchat.sampling import add_sampling_args, sampler_from_args
from torchchat.speculate import DEFAULT_DRAFT_K, SPECULATE_MODES

if TYPE_CHECKING:
    from torchchat.generate import Pick, Slot, Stats


def _add_answer_args(p: argparse.ArgumentParser) -> None:
    loading.add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--stats-json", help="write per-answer stats to this JSON file")
    held = p.add_mutually_exclusive_group()
    held.add_argument(
        "--json-schema", metavar="FILE", help="answer with JSON that validates against this schema"
    )
    held.add_argument(
        "--grammar",
        metavar="FILE",
        help="answer in this grammar: Lark (llguidance's) or llama.cpp's GBNF",
    )
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
    p.add_argument(
        "--draft-k",
        type=int,
        default=DEFAULT_DRAFT_K,
        help=f"ids guessed per forward with --speculate (default {DEFAULT_DRAFT_K})",
    )


def _speculate(args: argparse.Namespace) -> str | None:
    """The --speculate mode, with --draft alone meaning `draft`."""
    mode = args.speculate or ("draft" if args.draft else None)
    if args.draft and mode != "draft":
        raise UserError(f"--draft drafts for --speculate draft, not {mode}")
    if mode == "draft" and not args.draft:
        raise UserError("--speculate draft needs --draft MODEL")
    return mode


def _load(args: argparse.Namespace) -> loading.Loaded:
    """The model the flags name. Speculation verifies a draft with every
    position's logits, which the compiled package gives with a cache row
    (as the server's), so with --speculate it is compiled that way."""
    options = loading.options_from_args(args)
    if _speculate(args) and loading.compile_mode(options) == "aoti":
        options = loading.options_from_args(args, slots=1)
    return loading.load(options)


def _slot(args: argparse.Namespace, loaded: loading.Loaded) -> Slot:
    """The loaded model's slot, drafting as --speculate asks."""
    import torch

    from torchchat.artifacts import ArtifactError
    from torchchat.speculate import PromptLookup

    slot = loaded.slot()
    mode = _speculate(args)
    if not mode:
        return slot
    if args.draft_k < 1:
        raise UserError("--draft-k must be at least 1")
    model = slot.model
    try:
        # A probe at positions 0-1, which the first prompt overwrites.
        model.forward_all(torch.tensor([[0, 0]]), torch.tensor([0, 1]))  # type: ignore[attr-defined]
    except (AttributeError, ArtifactError) as e:
        raise UserError(
            f"--speculate needs every position's logits, which this model does not give ({e}); "
            "export it with --slots or --full-logits"
        ) from None
    slot.draft = PromptLookup() if mode == "prompt-lookup" else _draft_model(args, loaded)
    slot.draft_k = args.draft_k
    return slot


# Text whose ids two tokenizers must agree on for one to draft for the other.
_TOKENIZER_PROBE = "Hello, world! Speculative decoding: 1234 ids, <tag> and\n\tthe end."


def _draft_model(args: argparse.Namespace, loaded: loading.Loaded) -> Any:
    """--draft's model, loaded as the target is (its compile mode, context
    and device), refused unless its tokenizer gives the same ids."""
    from torchchat.speculate import DraftModel

    path = user_path(args.draft)
    options = loading.LoadOptions(
        model=str(path) if path is not None and path.exists() else args.draft,
        compile=args.compile,
        max_seq_length=args.max_seq_length,
        device=args.device,
        quiet=args.quiet,
    )
    draft = loading.load(options)
    mine, theirs = loaded.tokenizer, draft.tokenizer
    if mine.encode(_TOKENIZER_PROBE, bos=False) != theirs.encode(_TOKENIZER_PROBE, bos=False):
        raise UserError(f"--draft {args.draft}: its tokenizer differs from the model's")
    model: Any = loaded.model
    # The eager model names its vocabulary in its config, an artifact itself.
    vocab = model.config.vocab_size if hasattr(model, "config") else model.vocab_size
    return DraftModel(draft.ensure_model(), vocab)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchchat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one prompt")
    _add_answer_args(g)
    g.add_argument("--prompt", default="Hello, my name is")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="wrap the prompt in the model's chat template as a user turn "
        "(by default it is sent as is, as aoti_run and et_run send -i)",
    )
    c = sub.add_parser("chat", help="multi-turn chat on stdin (/exit to leave)")
    _add_answer_args(c)
    # Its flags live in server/main.py; main() hands it the rest of argv.
    sub.add_parser("server", help="OpenAI-compatible HTTP server (server/README.md)")
    sub.add_parser(
        "serve-cluster", help="the server as Ray Serve replicas across a cluster (server/README.md)"
    )
    sub.add_parser("eval", help="perplexity and benchmark tasks (evals/README.md)")
    sub.add_parser("list", help="list known models")
    for name, text in (
        ("where", "print where a model lives"),
        ("download", "fetch a model"),
        ("remove", "delete a downloaded model"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("model")
    return parser


def _text(value: str, what: str) -> str:
    """argv and stdin decode invalid UTF-8 to lone surrogates; refuse them here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{what} is not valid UTF-8 (byte {e.start})") from None
    return value


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stats_out(args: argparse.Namespace, all_stats: list[Stats], info: dict[str, Any]) -> None:
    if not args.stats_json:
        return
    path = user_path(args.stats_json)
    data = {"model": info, "answers": [s.to_json() for s in all_stats]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _report(args: argparse.Namespace, stats: Stats) -> None:
    if not args.quiet:
        print(stats.summary(), file=sys.stderr, flush=True)


def _hint_chat_template(tok: Any) -> None:
    """An instruct model given a raw prompt often ends its answer at once."""
    if tok.template() is not None:
        print(
            "torchchat: the model ended its answer at its first token; it has a chat "
            "template, so try --chat-template or `torchchat chat`",
            file=sys.stderr,
        )


def _grammar(args: argparse.Namespace) -> str | None:
    """--json-schema's or --grammar's grammar, compiled; a bad file is a UserError."""
    from torchchat import grammar

    kind, path = (
        ("json-schema", args.json_schema) if args.json_schema else ("grammar", args.grammar)
    )
    if not path:
        return None
    try:
        return grammar.from_file(user_path(path), kind)
    except grammar.GrammarError as e:
        raise UserError(f"--{kind}: {e}") from None


def _held(g: str | None, tok: Any, sampler: Pick) -> Pick:
    """The sampler, held to the grammar for one answer."""
    from torchchat.grammar import Guided

    return sampler if g is None else Guided(g, tok, sampler)


def cmd_generate(args: argparse.Namespace) -> int:
    from torchchat.generate import Reply, Stats, generate_text

    if args.num_samples < 1:
        raise UserError("--num-samples must be at least 1")
    prompt = _text(args.prompt, "--prompt")
    system = _text(args.system_prompt, "--system-prompt") if args.system_prompt else None
    sampler = sampler_from_args(args)
    held = _grammar(args)
    loaded = _load(args)
    tok = loaded.tokenizer
    if args.chat_template:
        template = tok.template()
        if template is None:
            raise UserError("this model has no chat template; drop --chat-template")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        # The template writes any bos itself.
        ids = tok.encode(template.render(messages, add_generation_prompt=True), bos=False)
    else:
        ids = tok.encode(prompt, bos=tok.add_bos)
    loaded.check_fits(len(ids))
    slot = _slot(args, loaded)
    all_stats = []
    for _ in range(args.num_samples):
        try:
            if not args.chat_template:
                _out(prompt)
            pick = _held(held, tok, sampler)
            reply = generate_text(slot, tok, ids, pick, args.max_new_tokens, _out)
        except KeyboardInterrupt:  # between the echo and the first decode step
            reply = Reply([], "", Stats(stop_reason="interrupted"))
        _out("\n")
        stats = reply.stats
        if not args.chat_template and not reply.ids and stats.stop_reason == "eos":
            _hint_chat_template(tok)
        stats.model_load_start_ms, stats.model_load_end_ms = (
            loaded.load_start_ms,
            loaded.load_end_ms,
        )
        all_stats.append(stats)
        _report(args, stats)
        if stats.stop_reason == "interrupted":
            _stats_out(args, all_stats, loaded.info)
            return EXIT_INTERRUPT
    _stats_out(args, all_stats, loaded.info)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from torchchat.generate import ChatSession, ContextOverflow

    system = _text(args.system_prompt, "--system-prompt") if args.system_prompt else None
    sampler = sampler_from_args(args)
    held = _grammar(args)
    loaded = _load(args)
    template = loaded.tokenizer.template()
    if template is None:
        raise UserError("this model has no chat template; use `generate` instead")
    session = ChatSession(_slot(args, loaded), loaded.tokenizer, template, system)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # _text reports bad bytes
    interactive = sys.stdin.isatty()
    all_stats = []
    if interactive:
        print("Chatting; type /exit to leave.", file=sys.stderr)
    while True:
        if interactive:
            _out("User: ")
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            _out("\n")
            break
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit", "/bye"):
            break
        # A line the session refuses leaves the conversation as it was.
        try:
            line = _text(line, "the input line")
            _out("Assistant: ")
            pick = _held(held, loaded.tokenizer, sampler)
            reply = session.turn(line, pick, args.max_new_tokens, _out)
        except (UserError, ContextOverflow) as e:
            _out("\n")
            print(f"torchchat: error: {e}", file=sys.stderr)
            continue
        _out("\n")
        for _ in range(session.dropped_last_turn):
            print("(forgot the oldest turn to fit the context)", file=sys.stderr)
        reply.stats.model_load_start_ms = loaded.load_start_ms
        reply.stats.model_load_end_ms = loaded.load_end_ms
        all_stats.append(reply.stats)
        _report(args, reply.stats)
        if reply.stats.stop_reason == "interrupted":
            break
    _stats_out(args, all_stats, loaded.info)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from torchchat import registry

    for e in registry.MODELS.values():
        mark = "*" if registry.is_downloaded(e) else " "
        kind = "built-in" if e.builtin else ("downloaded" if mark == "*" else "")
        print(f"{mark} {e.aliases[0] if e.aliases else e.name:<24} {e.name:<42} {kind}")
    print(f"\nmodels directory: {registry.models_dir()}")
    return 0


def cmd_where(args: argparse.Namespace) -> int:
    from torchchat import registry

    print(registry.model_path(registry.resolve(args.model)))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from torchchat import registry

    e = registry.resolve(args.model)
    print(registry.download(e))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from torchchat import registry

    e = registry.resolve(args.model)
    if registry.remove(e):
        print(f"removed {registry.model_path(e)}")
    else:
        print(f"{e.name} is not downloaded")
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "chat": cmd_chat,
    "list": cmd_list,
    "where": cmd_where,
    "download": cmd_download,
    "remove": cmd_remove,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        from server.main import main as server_main

        return server_main(argv[1:])
    if argv[:1] == ["serve-cluster"]:
        from server.cluster import main as cluster_main

        return cluster_main(argv[1:])
    if argv[:1] == ["eval"]:
        from evals.main import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    # torchao registers an Enum with torch's pytree at import, which torch
    # now logs as deprecated: a warning about our dependencies, not for users.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    expected = loading.expected_errors()
    try:
        return COMMANDS[args.command](args)
    except expected as e:
        sys.stdout.flush()
        print(f"torchchat: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
