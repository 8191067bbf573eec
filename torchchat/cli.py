"""torchchat command line: generate, chat, server, eval, list, where, download, remove.

Command names and flags follow upstream torchchat. Errors a user can cause
(an unknown alias, a missing or corrupt checkpoint, a prompt longer than
the context, bad --quantize JSON) print one line and exit 1; Ctrl-C stops
generation and exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from torchchat.paths import user_path

if TYPE_CHECKING:
    from torchchat.checkpoint import Checkpoint
    from torchchat.generate import LLMModel, Slot, Stats
    from torchchat.sampling import Sampler
    from torchchat.tokenizer import Tokenizer

EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERRUPT = 130


class UserError(Exception):
    pass


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        help="model alias (see `list`); default: the built-in SmolLM2-135M-Instruct",
    )
    p.add_argument("--checkpoint-path", help="HF directory, Meta directory/.pth or .gguf file")
    p.add_argument("--gguf-path", help="a .gguf file")
    p.add_argument("--tokenizer-path", help="tokenizer file (default: from the checkpoint)")
    p.add_argument("--aoti-package-path", help="an AOTInductor .pt2 package exported by //export")
    p.add_argument("--pte-path", help="an ExecuTorch .pte program exported by //export")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        help="compute dtype (default fp32). A 4-bit GGUF runs in its own precision unless "
        "--dtype or --quantize is given; --dtype fp32 dequantizes it",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--compile",
        nargs="?",
        const="torch",
        default="auto",
        choices=["auto", "aoti", "torch", "none"],
        help="auto (default): on CPU, compile the model with AOTInductor on first use and "
        "reuse it from the user cache (aoti); --compile alone: torch.compile the decode step "
        "in this process (torch); none: plain eager",
    )
    p.add_argument(
        "--quantize", help='JSON (or a .json file), e.g. \'{"linear:int4": {"groupsize": 32}}\''
    )
    p.add_argument(
        "--max-seq-length", type=int, help="KV cache length (default: min(model context, 2048))"
    )
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--system-prompt", help="system message for the chat template")
    p.add_argument("--stats-json", help="write per-answer stats to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no stats lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchchat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one prompt")
    _add_model_args(g)
    g.add_argument("--prompt", default="Hello, my name is")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="wrap the prompt in the model's chat template as a user turn "
        "(by default it is sent as is, as aoti_run and et_run send -i)",
    )
    c = sub.add_parser("chat", help="multi-turn chat on stdin (/exit to leave)")
    _add_model_args(c)
    # Its flags live in server/main.py; main() hands it the rest of argv.
    sub.add_parser("server", help="OpenAI-compatible HTTP server (server/README.md)")
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


# --- loading -------------------------------------------------------------------


@dataclass
class Loaded:
    """The loaded model and tokenizer. On a compile-cache miss the model is
    compiled when the first slot is made, after the caller has checked its
    input, so a bad prompt never waits for a compile."""

    model: Optional[LLMModel]
    step: Optional[Callable]  # a compiled decode step, or None
    tokenizer: Tokenizer
    info: Dict[str, Any]
    load_start_ms: float
    load_end_ms: float
    max_seq_length: int
    compile: Optional[Callable[[], Tuple[LLMModel, Dict[str, Any]]]] = None

    def slot(self, device: str) -> Slot:
        from torchchat.generate import Slot, now_ms

        if self.model is None:
            self.model, info = self.compile()
            self.info.update(info)
            self.load_end_ms = now_ms()
        return Slot(self.model, self.step, device)

    def check_fits(self, n_new: int) -> None:
        from torchchat.generate import check_fits

        check_fits(self.max_seq_length, n_new)


def _resolve_source(args: argparse.Namespace) -> Tuple[Optional[Path], Optional[Path]]:
    """(checkpoint, artifact) the flags name; an alias resolves to its checkpoint."""
    from torchchat import registry

    if args.checkpoint_path and args.gguf_path:
        raise UserError("give only one of --checkpoint-path and --gguf-path")
    if args.aoti_package_path and args.pte_path:
        raise UserError("give only one of --aoti-package-path and --pte-path")
    artifact = user_path(args.aoti_package_path or args.pte_path)
    checkpoint = user_path(args.gguf_path or args.checkpoint_path)
    if artifact or checkpoint:
        return checkpoint, artifact
    entry = registry.resolve(args.model or registry.DEFAULT_MODEL)
    if not registry.is_downloaded(entry):
        raise UserError(f"{entry.name} is not downloaded; run `torchchat download {args.model}`")
    return registry.checkpoint_path(entry), None


def _load_artifact(args: argparse.Namespace, path: Path):
    from torchchat import artifacts

    try:
        if args.aoti_package_path:
            return artifacts.load_pt2(path, args.device)
        return artifacts.load_pte(path)
    except artifacts.ArtifactError as e:
        raise UserError(str(e)) from e


def _build_model(
    args: argparse.Namespace, ckpt: Checkpoint, spec: Dict[str, Any], dtype_name: str
) -> Tuple[Any, Optional[Callable], Dict[str, Any]]:
    """The eager model: dtype, --quantize, device, and --compile torch's step."""
    import torch

    from torchchat import checkpoint as ckpt_mod
    from torchchat import quantize as quant_mod
    from torchchat.model import DTYPES, attend_filled_cache

    model = attend_filled_cache(
        ckpt_mod.load_model(ckpt, DTYPES[dtype_name], args.max_seq_length, "cpu")
    )
    if not spec and args.dtype is None and ckpt.gguf_quantized:
        spec = quant_mod.gguf_native_spec(model, ckpt.gguf_quantized)
    counts = quant_mod.quantize_model(model, spec, ckpt.gguf_quantized) if spec else {}
    model = model.to(args.device)
    step = None
    if args.compile == "torch":
        # FilledCacheSDPA reads the position with .item(); captured, it stays in
        # the graph instead of splitting every layer in two.
        torch._dynamo.config.capture_scalar_outputs = True
        step = torch.compile(model, dynamic=False, fullgraph=True)
    info = {
        "checkpoint": str(ckpt.path),
        "format": ckpt.format,
        "dtype": dtype_name,
        "quantize": {k: v for k, v in counts.items() if v},
    }
    return model, step, info


def _tokenizer_source(src: Any) -> Dict[str, Any]:
    """What loading the tokenizer needs, from a Checkpoint."""
    return {
        "tokenizer_path": str(src.tokenizer_path) if src.tokenizer_path else None,
        "chat_template": src.chat_template,
        "bos_id": src.bos_id,
        "eos_ids": list(src.eos_ids),
        "add_bos": src.add_bos,
    }


class _CompileProgress:
    """The first run's compile stages, with the time they take: a bar on a
    terminal, a line per stage otherwise."""

    STAGES = ("export", "compile")

    def __init__(self, name: str, quiet: bool):
        from torchchat import compile_cache

        self.quiet, self.bar, self.start = quiet, None, 0.0
        if quiet:
            return
        print(
            f"torchchat: compiling {name} for this CPU with AOTInductor; this happens once "
            f"(about 2 min on 2 cores) and later runs start in about a second. Cached in "
            f"{compile_cache.cache_dir()}; --compile none skips it.",
            file=sys.stderr,
            flush=True,
        )
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=len(self.STAGES),
                file=sys.stderr,
                bar_format="{desc} {bar} {n}/{total} [{elapsed}]",
            )

    def stage(self, name: str) -> None:
        from torchchat.generate import now_ms

        if self.bar is not None:
            self.bar.n = self.STAGES.index(name)
            self.bar.set_description_str(f"{name:>8}")
        elif not self.quiet:
            print(f"torchchat: {name}...", file=sys.stderr, flush=True)
        self.start = self.start or now_ms()

    def close(self) -> None:
        from torchchat.generate import now_ms

        if self.bar is not None:
            self.bar.n = len(self.STAGES)
            self.bar.set_description_str("    done")
            self.bar.close()
        elif not self.quiet and self.start:
            print(f"torchchat: compiled in {(now_ms() - self.start) / 1e3:.0f} s", file=sys.stderr)


def _compiled(
    args: argparse.Namespace,
    checkpoint: Path,
    spec: Dict[str, Any],
    dtype_name: str,
    slots: int = 0,
) -> Tuple[Optional[Any], Dict[str, Any], Dict[str, Any], int, Optional[Callable]]:
    """(package model, info, tokenizer source, max_seq_length, compile) from
    the compile cache. A hit never reads the checkpoint's weights; a miss
    builds the eager model and returns `compile` to make the package (with
    `slots` cache rows, for the server's batching)."""
    import warnings

    from torchchat import checkpoint as ckpt_mod
    from torchchat import compile_cache
    from torchchat.artifacts import ArtifactError

    settings = {
        "quantize": spec,
        "dtype": args.dtype,
        "resolved_dtype": dtype_name,
        "max_seq_length": args.max_seq_length,
    }
    if slots:
        settings["slots"] = slots
    k = compile_cache.key(checkpoint, settings)
    entry = compile_cache.lookup(k)
    if entry is not None:
        try:
            backend = compile_cache.open_entry(k)
            info = dict(entry["info"], compiled=str(backend.path))
            return backend, info, entry["tokenizer"], backend.max_seq_length, None
        except ArtifactError as e:
            print(f"torchchat: compiling again: {e}", file=sys.stderr)
            compile_cache.remove(k)
    ckpt = ckpt_mod.load_checkpoint(checkpoint)
    model, _, info = _build_model(args, ckpt, spec, dtype_name)
    tok_src = _tokenizer_source(ckpt)

    def compile() -> Tuple[Any, Dict[str, Any]]:
        progress = _CompileProgress(checkpoint.name, args.quiet)
        try:
            # torch.export warns about its own internals (pytree deprecations).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile_cache.store(
                    k,
                    settings,
                    model,
                    ckpt,
                    dtype_name,
                    info["quantize"],
                    info,
                    tok_src,
                    progress.stage,
                    slots,
                )
        finally:
            progress.close()
        backend = compile_cache.open_entry(k)
        return backend, {"compiled": str(backend.path)}

    return None, info, tok_src, model.max_seq_length, compile


def _load(args: argparse.Namespace, slots: int = 0) -> Loaded:
    """The model and tokenizer the flags name; a model compiled on first use
    gets `slots` cache rows (the server's; 0 is batch 1)."""
    import torch

    from torchchat import checkpoint as ckpt_mod
    from torchchat import quantize as quant_mod
    from torchchat import tokenizer as tok_mod
    from torchchat.generate import now_ms
    from torchchat.model import DTYPES

    start = now_ms()
    spec = quant_mod.parse(args.quantize)
    dtype_name = spec.get("precision", {}).get("dtype", args.dtype or "fp32")
    if dtype_name not in DTYPES:
        raise UserError(f"unknown dtype {dtype_name!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build has no usable CUDA device")
    if args.max_seq_length is not None and args.max_seq_length < 2:
        raise UserError("--max-seq-length must be at least 2")
    if args.compile == "aoti" and args.device != "cpu":
        raise UserError("--compile aoti runs on the CPU; use --compile torch or none")
    compile_mode = args.compile
    if compile_mode == "auto":
        compile_mode = "aoti" if args.device == "cpu" else "none"
    checkpoint, artifact = _resolve_source(args)
    backend = _load_artifact(args, artifact) if artifact else None
    step, compile = None, None
    if backend is not None:
        info = {"backend": type(backend).__name__, "artifact": str(backend.path)}
        model, tok_src = backend, {"tokenizer_path": backend.tokenizer_path}
        max_seq = backend.max_seq_length
    elif compile_mode == "aoti":
        model, info, tok_src, max_seq, compile = _compiled(
            args, checkpoint, spec, dtype_name, slots
        )
    else:
        ckpt = ckpt_mod.load_checkpoint(checkpoint)
        model, step, info = _build_model(args, ckpt, spec, dtype_name)
        tok_src, max_seq = _tokenizer_source(ckpt), model.max_seq_length
    tok_path = user_path(args.tokenizer_path) or tok_src.get("tokenizer_path")
    if tok_path is None:
        raise UserError(
            "no tokenizer found next to the checkpoint or artifact; pass --tokenizer-path"
        )
    tok = tok_mod.load(
        Path(tok_path),
        chat_template=tok_src.get("chat_template"),
        bos_id=tok_src.get("bos_id"),
        eos_ids=tuple(tok_src.get("eos_ids") or ()),
        add_bos=tok_src.get("add_bos"),
    )
    info["tokenizer"] = str(tok_path)
    return Loaded(model, step, tok, info, start, now_ms(), max_seq, compile)


def _sampler(args: argparse.Namespace) -> Sampler:
    from torchchat.sampling import Sampler

    try:
        return Sampler(
            args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty, args.seed
        )
    except ValueError as e:
        raise UserError(str(e)) from e


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


def _stats_out(args: argparse.Namespace, all_stats: List[Stats], info: Dict[str, Any]) -> None:
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


def cmd_generate(args: argparse.Namespace) -> int:
    from torchchat.generate import Reply, Stats, generate_text

    if args.num_samples < 1:
        raise UserError("--num-samples must be at least 1")
    prompt = _text(args.prompt, "--prompt")
    system = _text(args.system_prompt, "--system-prompt") if args.system_prompt else None
    sampler = _sampler(args)
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
    slot = loaded.slot(args.device)
    all_stats = []
    for _ in range(args.num_samples):
        try:
            if not args.chat_template:
                _out(prompt)
            reply = generate_text(slot, tok, ids, sampler, args.max_new_tokens, _out)
        except KeyboardInterrupt:  # between the echo and the first decode step
            reply = Reply([], "", Stats(stop_reason="interrupted"))
        _out("\n")
        stats = reply.stats
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
    sampler = _sampler(args)
    loaded = _load(args)
    template = loaded.tokenizer.template()
    if template is None:
        raise UserError("this model has no chat template; use `generate` instead")
    session = ChatSession(loaded.slot(args.device), loaded.tokenizer, template, system)
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
            reply = session.turn(line, sampler, args.max_new_tokens, _out)
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


def expected_errors() -> Tuple[type, ...]:
    """Failures a user can cause: one line each. Anything else is a bug and
    keeps its traceback. The server loads models the same way."""
    from torchchat.checkpoint import CheckpointError
    from torchchat.generate import ContextOverflow
    from torchchat.model import ConfigError
    from torchchat.quantize import QuantizeError
    from torchchat.registry import RegistryError
    from torchchat.tokenizer import TokenizerError

    return (
        UserError,
        CheckpointError,
        ConfigError,
        ContextOverflow,
        QuantizeError,
        RegistryError,
        TokenizerError,
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        from server.main import main as server_main

        return server_main(argv[1:])
    if argv[:1] == ["eval"]:
        from evals.main import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    # torchao registers an Enum with torch's pytree at import, which torch
    # now logs as deprecated: a warning about our dependencies, not for users.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    expected = expected_errors()
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
