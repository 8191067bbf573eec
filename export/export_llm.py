"""export_llm: one model definition to an ExecuTorch .pte or an AOTInductor .pt2.

    export_llm [MODEL] --output-pte-path out/model.pte [--quantize JSON|q4|mobile]
    export_llm [MODEL] --output-aoti-package-path out/model.pt2 [--dtype bf16]

The command line: flags, the checks that refuse a request before minutes of
work, and the dispatch to export.pte (ExecuTorch) and export.pt2
(AOTInductor). The model is named and its tokenizer loaded as for generate
(torchchat.loading, through export.source).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from export import pt2, pte, quant, tokenizer_files, vision_pte
from export.source import checkpoint_of, load_source
from export.stages import Stages
from torchchat import loading
from torchchat.atomic import OutputPathError, check_writable
from torchchat.errors import UserError
from torchchat.paths import user_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_llm",
        description="Export an LLM to an ExecuTorch .pte and/or an AOTInductor .pt2.",
    )
    loading.add_source_args(p, artifacts=False)
    p.add_argument("--output-pte-path", help="write an ExecuTorch program here")
    p.add_argument("--output-aoti-package-path", help="write an AOTInductor package (.pt2) here")
    p.add_argument(
        "--quantize", help="JSON, a .json file, or a preset: " + ", ".join(quant.PRESETS)
    )
    p.add_argument(
        "--dtype",
        choices=loading.DTYPE_CHOICES,
        help="compute dtype (default fp32). Without --dtype or --quantize, a .pt2 of a 4-bit "
        "GGUF keeps the file's Q4 codes (as generate does); --dtype fp32 dequantizes it",
    )
    p.add_argument(
        "--max-seq-length", type=int, help="KV cache length (default: min(model context, 2048))"
    )
    p.add_argument(
        "--et-custom-ops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use ExecuTorch's llama::update_cache / custom_sdpa ops, which attend over the "
        "filled cache only (default; et_run and ExecuTorch's runners link them). "
        "--no-et-custom-ops: a graph for runners with only the core, portable and "
        "XNNPACK kernels",
    )
    p.add_argument(
        "--full-logits",
        action="store_true",
        help="return the logits of every prompt position, [1, T, vocab], not only the last "
        "(ExecuTorch's generate_full_logits): `torchchat eval` needs them; the runners "
        "read the last row either way",
    )
    p.add_argument(
        "--slots",
        type=int,
        default=0,
        help="a .pt2 for `torchchat server`'s continuous batching: a KV cache of this many "
        "rows (requests served at once), each with its own positions; the cache grows by "
        "this factor. aoti_run and generate run such a package as one sequence",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def outputs(args: argparse.Namespace) -> dict[str, Path]:
    """The artifacts asked for, by kind ("pte", "pt2")."""
    outs = {}
    if args.output_pte_path:
        outs["pte"] = user_path(args.output_pte_path)
        if outs["pte"].suffix != ".pte":
            raise UserError(f"--output-pte-path must end in .pte: {outs['pte']}")
    if args.output_aoti_package_path:
        outs["pt2"] = user_path(args.output_aoti_package_path)
        if outs["pt2"].suffix != ".pt2":
            raise UserError(f"--output-aoti-package-path must end in .pt2: {outs['pt2']}")
    if not outs:
        raise UserError("give --output-pte-path and/or --output-aoti-package-path")
    return outs


def check_request(
    args: argparse.Namespace, outs: dict[str, Path], spec: dict[str, Any], dtype_name: str
) -> None:
    """Refuses what a target cannot do, before minutes of work."""
    if "pte" in outs:
        q = quant.for_executorch(spec)
        if (q.q4_kernels or q.gguf_kernels) and dtype_name != "fp32":
            raise UserError(f"linear:int4 in a .pte computes in fp32; drop --dtype {dtype_name}")
        if dtype_name == "fp16":
            raise UserError("--dtype fp16 is not supported for a .pte (XNNPACK takes fp32 or bf16)")
    if "pt2" in outs:
        quant.for_aoti(spec)
    if args.slots:
        if args.slots < 2 or "pte" in outs:
            raise UserError(
                "--slots takes 2 or more, and only with --output-aoti-package-path "
                "(a .pte runs one sequence)"
            )
        if args.full_logits:
            raise UserError("--slots returns each sequence's last logits; drop --full-logits")


def run(args: argparse.Namespace, out: TextIO | None = None) -> dict[str, Any]:
    """Exports what `args` ask for; returns what was written, by kind."""
    from torchchat.config import context_length

    out = out or sys.stderr
    stages = Stages(out, enabled=not args.quiet)
    outs = outputs(args)
    spec = quant.parse(args.quantize)
    dtype_name = quant.dtype_of(spec, args.dtype or "fp32")
    check_request(args, outs, spec, dtype_name)
    options = loading.source_options(args, dtype=args.dtype)
    ckpt_path = checkpoint_of(options)
    for path in outs.values():
        check_writable(str(path))
    results: dict[str, Any] = {}

    with stages("load", str(ckpt_path)):
        source = load_source(ckpt_path, options.tokenizer)
        max_seq_length = context_length(source.config, args.max_seq_length)
        if "pte" in outs and source.ckpt.vision is not None:
            vision_pte.check(spec, args.full_logits, source.ckpt.vision)
        for path in outs.values():
            for name in tokenizer_files.planned_names(source.tokenizer_path):
                check_writable(str(path.parent / name))

    for kind, path in outs.items():
        t0 = time.perf_counter()
        tf = tokenizer_files.write(
            path.parent,
            source.tokenizer_path,
            source.chat_template,
            source.bos_token,
            source.eos_token,
        )
        if kind == "pte" and source.ckpt.vision is not None:
            info = vision_pte.export(
                source, path, spec, dtype_name, max_seq_length, args.et_custom_ops, stages
            )
        elif kind == "pte":
            info = pte.export(
                source,
                path,
                spec,
                dtype_name,
                max_seq_length,
                args.et_custom_ops,
                args.full_logits,
                stages,
            )
        else:
            # A GGUF's own formats by default, as generate runs it.
            native = "gguf" in spec or loading.runs_native(options, spec, source.ckpt)
            info = pt2.export(
                source,
                path,
                spec,
                dtype_name,
                max_seq_length,
                tf,
                native,
                args.full_logits,
                args.slots,
                stages,
            )
        size = path.stat().st_size
        info.update(
            path=str(path),
            bytes=size,
            seconds=time.perf_counter() - t0,
            tokenizer=[str(p) for p in tf.written],
        )
        results[kind] = info
        if not args.quiet:
            print(
                f"wrote {path} ({size / 2**20:.1f} MiB) in {info['seconds']:.1f} s; "
                f"tokenizer: {', '.join(p.name for p in tf.written)}",
                file=out,
                flush=True,
            )
    results["stage_seconds"] = dict(stages.times)
    return results


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures bad input causes: one line each (loading's, and export's own)."""
    return (*loading.expected_errors(), OutputPathError, tokenizer_files.TokenizerFilesError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = expected_errors()
    try:
        run(args)
    except known as e:
        print(f"export_llm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export_llm: interrupted; nothing was written at the output path", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
