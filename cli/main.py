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
import functools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchchat import loading, pipeline, speculate_flags
from torchchat.errors import EXIT_ERROR, EXIT_INTERRUPT, UserError
from torchchat.paths import user_path
from torchchat.sampling import add_sampling_args, sampler_from_args

if TYPE_CHECKING:
    from torchchat.generate import Pick, Slot, Stats


def _add_answer_args(p: argparse.ArgumentParser) -> None:
    loading.add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--stats-json", help="write per-answer stats to this JSON file")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an image for the model to see (repeatable; Gemma 3 4B and up, SmolVLM); runs the eager "
        "model, or a .pt2 exported with its vision encoder. In chat it goes with the first turn; "
        "/image PATH attaches one to the next",
    )
    held = p.add_mutually_exclusive_group()
    held.add_argument(
        "--json-schema", metavar="FILE", help="answer with JSON that validates against this schema"
    )
    held.add_argument(
        "--grammar",
        metavar="FILE",
        help="answer in this grammar: Lark (llguidance's) or llama.cpp's GBNF",
    )
    speculate_flags.add_args(p)
    pipeline.add_args(p)


def _load(args: argparse.Namespace) -> loading.Loaded:
    """The model the flags name. Speculation verifies a draft with every
    position's logits, which the compiled package gives with a cache row
    (as the server's), so with --speculate it is compiled that way."""
    options = loading.options_from_args(args)
    images = args.image or args.mmproj
    if images and loading.compile_mode(options) != "none":
        # The compiled package takes ids only; images enter as embeddings.
        if args.compile not in ("auto", "none"):
            flag = "--image" if args.image else "--mmproj"
            also = ""
            if args.image:
                also = (
                    ", or run a .pt2 exported with its vision tower "
                    "(--aoti-package-path; export/README.md)"
                )
            raise UserError(
                f"{flag} runs the eager model (the compiled package takes token ids only); "
                f"drop --compile {args.compile}{also}"
            )
        options = loading.options_from_args(args, compile="none")
    elif speculate_flags.mode(args) and loading.compile_mode(options) == "aoti":
        options = loading.options_from_args(args, slots=1)
    loaded = loading.load(options)
    if args.image and loaded.vision is None:
        raise UserError("--image: this model sees no images (Gemma 3 4B and up and SmolVLM do)")
    return loaded


def _images(paths: list[str]) -> list[Any]:
    from torchchat.vision import read_image

    out = []
    for p in paths:
        path = user_path(p)
        out.append(read_image(path if path is not None else p))
    return out


def _slot(args: argparse.Namespace, loaded: loading.Loaded) -> Slot:
    """The loaded model's slot, drafting as --speculate asks."""
    from torchchat.speculate import DraftModel, PromptLookup

    slot = loaded.slot()
    mode = speculate_flags.mode(args)
    if not mode:
        return slot
    k, adapt = speculate_flags.draft_k(args)
    speculate_flags.check_verifies(slot.model)
    if mode == "prompt-lookup":
        slot.draft = PromptLookup()
    else:
        draft = speculate_flags.load_draft(args, loaded)
        slot.draft = DraftModel(draft.ensure_model(), speculate_flags.vocab_size(loaded.model))
    slot.draft_k, slot.adapt_k = k, adapt
    return slot


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
    images = _images(args.image)
    loaded = _load(args)
    tok = loaded.tokenizer
    vision = loaded.vision if images else None
    if args.chat_template:
        template = tok.template()
        if template is None:
            raise UserError("this model has no chat template; drop --chat-template")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        content: Any = prompt
        if images:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        messages.append({"role": "user", "content": content})
        # The template writes any bos itself.
        text = template.render(messages, add_generation_prompt=True)
        bos = False
    else:
        text, bos = prompt, tok.add_bos
        if vision is not None:
            text = vision.with_markers(text, len(images), tok)
    if vision is not None:
        text = vision.expand(text, tok, [im.size for im in images])
    ids = tok.encode(text, bos=bos)
    loaded.check_fits(len(ids))
    spans = vision.spans(ids, images) if vision is not None else []
    slot = _slot(args, loaded)
    all_stats = []
    for _ in range(args.num_samples):
        try:
            if not args.chat_template:
                _out(prompt)
            pick = _held(held, tok, sampler)
            reply = generate_text(slot, tok, ids, pick, args.max_new_tokens, _out, images=spans)
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
    from torchchat.vision import ImageError

    system = _text(args.system_prompt, "--system-prompt") if args.system_prompt else None
    sampler = sampler_from_args(args)
    held = _grammar(args)
    loaded = _load(args)
    template = loaded.tokenizer.template()
    if template is None:
        raise UserError("this model has no chat template; use `generate` instead")
    session = ChatSession(_slot(args, loaded), loaded.tokenizer, template, system, loaded.vision)
    # Images for the next turn: --image's, then each /image line's.
    attached = _images(args.image)
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
        if line == "/image" or line.startswith("/image "):
            try:
                if loaded.vision is None:
                    raise UserError(
                        "/image: this model sees no images here (Gemma 3 4B and up and SmolVLM do, in the "
                        "eager model: start chat with --compile none or --image)"
                    )
                path = _text(line[len("/image") :].strip(), "/image")
                if not path:
                    raise UserError("/image needs a PATH")
                attached += _images([path])
                print(f"(image attached to the next turn: {len(attached)})", file=sys.stderr)
            except (UserError, ImageError) as e:
                print(f"torchchat: error: {e}", file=sys.stderr)
            continue
        # A line the session refuses leaves the conversation as it was.
        try:
            line = _text(line, "the input line")
            _out("Assistant: ")
            pick = _held(held, loaded.tokenizer, sampler)
            reply = session.turn(line, pick, args.max_new_tokens, _out, attached)
            attached = []
        except (UserError, ContextOverflow, ImageError) as e:
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
    if (getattr(args, "pipeline_parallel", None) or 0) > 1:
        return _dispatch(args, lambda: _pipelined(args, argv))
    return _dispatch(args, lambda: COMMANDS[args.command](args))


def _rank_entry(argv: list[str]) -> None:
    """A rank that launch_local started: the same command line."""
    sys.exit(main(argv))


def _pipelined(args: argparse.Namespace, argv: list[str]) -> int:
    """generate or chat with the model split across ranks: rank 0 runs the
    command over the pipeline, the others serve their stages until it is
    done. Without torchrun, the other ranks start here, on this host."""
    from torchchat import pipeline

    n = args.pipeline_parallel
    if speculate_flags.mode(args):
        raise UserError("--speculate and --draft run in one process; drop --pipeline-parallel")
    procs: list[Any] = []
    if pipeline.under_launcher():
        rank = pipeline.join(n)
    else:
        rank, procs = pipeline.launch_local(n, functools.partial(_rank_entry, argv))
    if not rank.first:
        loading.serve_stage(loading.options_from_args(args))
        return 0
    try:
        code = COMMANDS[args.command](args)
    finally:
        reports = pipeline.shutdown(rank, procs)
    if not args.quiet:
        for line in pipeline.describe(reports):
            print(line, file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace, run: Callable[[], int]) -> int:
    expected = loading.expected_errors()
    try:
        return run()
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
