"""torchchat command line: generate, chat, list, where, download, remove.

Command names and flags follow upstream torchchat. Errors a user can cause
(an unknown alias, a missing or corrupt checkpoint, a prompt longer than
the context, bad --quantize JSON) print one line and exit 1; Ctrl-C stops
generation and exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERRUPT = 130


class UserError(Exception):
    pass


def _user_path(p: Optional[str]) -> Optional[Path]:
    """Relative paths are relative to where the user ran `bazel run`."""
    if p is None:
        return None
    path = Path(p).expanduser()
    base = os.environ.get("BUILD_WORKING_DIRECTORY")
    if not path.is_absolute() and base:
        path = Path(base) / path
    return path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model alias (see `list`); default: the built-in SmolLM2-135M-Instruct")
    p.add_argument("--checkpoint-path", help="HF directory, Meta directory/.pth or .gguf file")
    p.add_argument("--gguf-path", help="a .gguf file")
    p.add_argument("--tokenizer-path", help="tokenizer file (default: from the checkpoint)")
    p.add_argument("--aoti-package-path", help="an AOTInductor .pt2 package exported by //export")
    p.add_argument("--pte-path", help="an ExecuTorch .pte program exported by //export")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--quantize", help="JSON (or a .json file), e.g. '{\"linear:int4\": {\"groupsize\": 32}}'")
    p.add_argument("--max-seq-length", type=int, help="KV cache length (default: min(model context, 2048))")
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
    g.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    c = sub.add_parser("chat", help="multi-turn chat on stdin (/exit to leave)")
    _add_model_args(c)
    sub.add_parser("list", help="list known models")
    for name, text in (("where", "print where a model lives"), ("download", "fetch a model"),
                       ("remove", "delete a downloaded model")):
        s = sub.add_parser(name, help=text)
        s.add_argument("model")
    return parser


# --- loading -------------------------------------------------------------------


def _load(args):
    """(backend, tokenizer, info) for the model the flags name."""
    import torch

    from torchchat import checkpoint as ckpt_mod
    from torchchat import quantize as quant_mod
    from torchchat import registry
    from torchchat import tokenizer as tok_mod
    from torchchat.model import DTYPES

    spec = quant_mod.parse(args.quantize)
    dtype_name = spec.get("precision", {}).get("dtype", args.dtype)
    if dtype_name not in DTYPES:
        raise UserError(f"unknown dtype {dtype_name!r}")
    dtype = DTYPES[dtype_name]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build has no usable CUDA device")
    if args.max_seq_length is not None and args.max_seq_length < 2:
        raise UserError("--max-seq-length must be at least 2")

    paths = [x for x in (args.checkpoint_path, args.gguf_path, args.aoti_package_path, args.pte_path) if x]
    if len(paths) > 1 and not (args.aoti_package_path or args.pte_path):
        raise UserError("give only one of --checkpoint-path and --gguf-path")
    if paths:
        source = _user_path(args.gguf_path or args.checkpoint_path) if (args.gguf_path or args.checkpoint_path) else None
    else:
        entry = registry.resolve(args.model or registry.DEFAULT_MODEL)
        if not registry.is_downloaded(entry):
            raise UserError(f"{entry.name} is not downloaded; run `torchchat download {args.model}`")
        source = registry.checkpoint_path(entry)

    ckpt = None
    if source is not None:
        ckpt = ckpt_mod.load_checkpoint(source)
    backend = None
    if args.aoti_package_path or args.pte_path:
        from torchchat import artifacts

        path = _user_path(args.aoti_package_path or args.pte_path)
        try:
            backend = artifacts.load_pt2(path, args.device) if args.aoti_package_path else artifacts.load_pte(path)
        except artifacts.ArtifactError as e:
            raise UserError(str(e)) from e
    tok_path = (_user_path(args.tokenizer_path) or (ckpt.tokenizer_path if ckpt else None)
                or (backend.tokenizer_path if backend else None))
    if tok_path is None:
        raise UserError("no tokenizer found next to the checkpoint or artifact; pass --tokenizer-path")
    tok = tok_mod.load(
        tok_path,
        chat_template=ckpt.chat_template if ckpt else None,
        bos_id=ckpt.bos_id if ckpt else None,
        eos_ids=ckpt.eos_ids if ckpt else (),
        add_bos=ckpt.add_bos if ckpt else None,
    )

    if backend is not None:
        return backend, None, tok, {"backend": type(backend).__name__, "artifact": str(backend.path)}

    from torchchat.model import optimize_for_eager

    model = optimize_for_eager(ckpt_mod.load_model(ckpt, dtype, args.max_seq_length, "cpu"))
    counts = quant_mod.quantize_model(model, spec, ckpt.gguf_quantized) if spec else {}
    model = model.to(args.device)
    decode_fn = None
    if args.compile:
        decode_fn = torch.compile(model, dynamic=False, fullgraph=False)
    info = {"checkpoint": str(ckpt.path), "format": ckpt.format, "dtype": dtype_name,
            "quantize": {k: v for k, v in counts.items() if v}, "tokenizer": tok.backend}
    return model, decode_fn, tok, info


def _sampler(args):
    from torchchat.sampling import Sampler

    try:
        return Sampler(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty, args.seed)
    except ValueError as e:
        raise UserError(str(e)) from e


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stats_out(args, all_stats, info) -> None:
    if not args.stats_json:
        return
    path = _user_path(args.stats_json)
    data = {"model": info, "answers": [s.to_json() for s in all_stats]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _prompt_ids(tok, template, messages, raw_text=None) -> List[int]:
    if template is None or raw_text is not None:
        text = raw_text if raw_text is not None else messages[-1]["content"]
        return tok.encode(text, bos=tok.add_bos)
    # The template writes any BOS itself.
    return tok.encode(template.render(messages, add_generation_prompt=True), bos=False)


def cmd_generate(args) -> int:
    from torchchat.generate import Generator

    if args.num_samples < 1:
        raise UserError("--num-samples must be at least 1")
    backend, decode_fn, tok, info = _load(args)
    gen = Generator(backend, tok, args.device, decode_fn)
    template = None if args.raw else tok.template()
    messages = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    messages.append({"role": "user", "content": args.prompt})
    ids = _prompt_ids(tok, template, messages, None if template else args.prompt)
    gen.check_fits(ids)
    sampler = _sampler(args)
    all_stats = []
    for i in range(args.num_samples):
        if args.raw or template is None:
            _out(args.prompt)
        _, stats = gen.generate(ids, sampler, args.max_new_tokens, _out)
        _out("\n")
        all_stats.append(stats)
        if not args.quiet:
            print(stats.line(), file=sys.stderr, flush=True)
        if stats.stop_reason == "interrupted":
            _stats_out(args, all_stats, info)
            return EXIT_INTERRUPT
    _stats_out(args, all_stats, info)
    return 0


def cmd_chat(args) -> int:
    from torchchat.generate import ContextOverflow, Generator

    backend, decode_fn, tok, info = _load(args)
    template = tok.template()
    if template is None:
        raise UserError("this model has no chat template; use `generate` instead")
    gen = Generator(backend, tok, args.device, decode_fn)
    sampler = _sampler(args)
    messages = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
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
        messages.append({"role": "user", "content": line})
        ids = tok.encode(template.render(messages, add_generation_prompt=True), bos=False)
        try:
            gen.check_fits(ids)
        except ContextOverflow as e:
            messages.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        budget = min(args.max_new_tokens, gen.max_seq_length - len(ids))
        _out("Assistant: ")
        out, stats = gen.generate(ids, sampler, budget, _out)
        _out("\n")
        messages.append({"role": "assistant", "content": tok.decode(out)})
        all_stats.append(stats)
        if not args.quiet:
            print(stats.line(), file=sys.stderr, flush=True)
    _stats_out(args, all_stats, info)
    return 0


def cmd_list(args) -> int:
    from torchchat import registry

    for e in registry.MODELS.values():
        mark = "*" if registry.is_downloaded(e) else " "
        kind = "built-in" if e.builtin else ("downloaded" if mark == "*" else "")
        print(f"{mark} {e.aliases[0] if e.aliases else e.name:<24} {e.name:<42} {kind}")
    print(f"\nmodels directory: {registry.models_dir()}")
    return 0


def cmd_where(args) -> int:
    from torchchat import registry

    print(registry.model_path(registry.resolve(args.model)))
    return 0


def cmd_download(args) -> int:
    from torchchat import registry

    e = registry.resolve(args.model)
    print(registry.download(e))
    return 0


def cmd_remove(args) -> int:
    from torchchat import registry

    e = registry.resolve(args.model)
    if registry.remove(e):
        print(f"removed {registry.model_path(e)}")
    else:
        print(f"{e.name} is not downloaded")
    return 0


COMMANDS = {
    "generate": cmd_generate, "chat": cmd_chat, "list": cmd_list,
    "where": cmd_where, "download": cmd_download, "remove": cmd_remove,
}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Expected failures, one line each; anything else is a bug and keeps its traceback.
    from torchchat.checkpoint import CheckpointError
    from torchchat.generate import ContextOverflow
    from torchchat.model import ConfigError
    from torchchat.quantize import QuantizeError
    from torchchat.registry import RegistryError
    from torchchat.tokenizer import TokenizerError

    expected = (UserError, CheckpointError, ConfigError, ContextOverflow, QuantizeError,
                RegistryError, TokenizerError)
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
