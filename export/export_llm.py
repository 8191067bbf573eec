"""export_llm: one model definition to an ExecuTorch .pte or an AOTInductor .pt2.

    export_llm [MODEL] --output-pte-path out/model.pte [--quantize JSON|mobile]
    export_llm [MODEL] --output-aoti-package-path out/model.pt2 [--dtype bf16]

The .pte path is ExecuTorch's own LLM flow (LLMEdgeManager, the llama
example's source transforms and metadata, XNNPACK partitioners); nothing is
lowered here. What this file adds: our checkpoint loaders, a dynamic-shape
KV-cache graph, bos/eos from the tokenizer, and atomic writes. By default the
graph uses ExecuTorch's llama::update_cache / custom_sdpa ops, as ExecuTorch's
own flow does: its runners link them, and et_run links our kernels for them
(//kernels:et_llama_ops). --no-et-custom-ops gives a graph that needs only
ExecuTorch's core, portable and XNNPACK libraries, and decodes slower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from export import quant
from torchchat.atomic import OutputPathError, atomic_output, check_writable
from torchchat.paths import user_path

if TYPE_CHECKING:
    from executorch.extension.llm.export.builder import DType
    from torch import nn

    from torchchat.checkpoint import Checkpoint, GGUFQuantized
    from torchchat.model import Model, ModelConfig


class ExportError(Exception):
    """Bad input or an impossible request; the message is shown as is."""


# --- progress -------------------------------------------------------------------


class Stages:
    """Prints each stage as it starts and its wall time when it ends."""

    def __init__(self, out: TextIO | None = None, enabled: bool = True):
        self.out = out or sys.stderr
        self.enabled = enabled
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = ""):
        if self.enabled:
            print(f"[{name}] {detail}".rstrip(), file=self.out, flush=True)
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        self.times[name] = self.times.get(name, 0.0) + dt
        if self.enabled:
            print(f"[{name}] done in {dt:.1f} s", file=self.out, flush=True)


# --- the model to export ----------------------------------------------------------


@dataclass
class Source:
    """A loaded checkpoint plus what the runners need to know about it."""

    ckpt: Checkpoint
    tokenizer_path: Path
    chat_template: str | None
    bos_id: int | None
    eos_ids: list[int]
    bos_token: str = ""
    eos_token: str = ""
    name: str = ""

    @property
    def config(self) -> ModelConfig:
        return self.ckpt.config


def resolve_checkpoint(model: str | None, checkpoint_path: Path | None) -> Path:
    """The checkpoint an alias, a positional path or --checkpoint-path names
    (torchchat.loading's rule, which generate and the server follow too)."""
    from torchchat import loading

    source = loading.resolve_source(
        loading.LoadOptions(
            model=model if checkpoint_path is None else None, checkpoint=checkpoint_path
        )
    )
    if source.checkpoint is None:
        raise ExportError(f"{source.artifact} is an exported artifact, not a checkpoint")
    return source.checkpoint


def load_source(path: Path, tokenizer_path: Path | None = None) -> Source:
    from torchchat import checkpoint as ckpt_mod
    from torchchat import tokenizer as tok_mod

    ckpt = ckpt_mod.load_checkpoint(path)
    tok_path = tokenizer_path or ckpt.tokenizer_path
    if tok_path is None:
        raise ExportError(f"no tokenizer found with {path}; pass --tokenizer-path")
    tok = tok_mod.load(
        tok_path, chat_template=ckpt.chat_template, bos_id=ckpt.bos_id, eos_ids=ckpt.eos_ids
    )
    bos = ckpt.bos_id if ckpt.bos_id is not None else tok.bos_id
    eos = list(ckpt.eos_ids) or list(tok.eos_ids)
    return Source(
        ckpt=ckpt,
        tokenizer_path=Path(tok_path),
        chat_template=ckpt.chat_template or tok.chat_template,
        bos_id=None if bos is None else int(bos),
        eos_ids=[int(x) for x in eos],
        bos_token=tok.token_text(bos) if bos is not None else "",
        eos_token=tok.token_text(eos[0]) if eos else "",
        name=Path(path).stem if Path(path).is_file() else Path(path).name,
    )


def check_max_seq_length(config: ModelConfig, max_seq_length: int | None) -> int:
    from torchchat.model import context_length

    return context_length(config, max_seq_length)


def build(source: Source, dtype_name: str, max_seq_length: int) -> Model:
    """The eager torchchat.model.Model with the checkpoint's weights."""
    from torchchat import checkpoint as ckpt_mod
    from torchchat.model import DTYPES

    return ckpt_mod.load_model(source.ckpt, DTYPES[dtype_name], max_seq_length, "cpu")


def build_native(source: Source, max_seq_length: int) -> tuple[Model, dict[str, int]]:
    """A GGUF's model in its own formats, in place (--quantize gguf), and how
    many weights run in each format."""
    from torchchat import checkpoint as ckpt_mod

    if source.ckpt.format != "gguf":
        raise ExportError(
            f"--quantize gguf keeps a GGUF's own formats; {source.ckpt.path} is not a GGUF"
        )
    return ckpt_mod.load_native(source.ckpt, max_seq_length)


# --- ExecuTorch ---------------------------------------------------------------------


def enable_dynamic_shape(model: nn.Module) -> None:
    """Switches the llama Transformer to ExecuTorch's dynamic-shape KV-cache mode.

    torchchat builds it for eager/AOTI (input_pos holds every position); ET's
    runners call forward(tokens[1, T], start_pos[1]) with T varying, which is
    the Transformer's enable_dynamic_shape mode. Attention and the KV cache
    copy the flag at construction and RoPE reads it from ModelArgs at run
    time, so both places are set.
    """
    for mod in model.modules():
        if hasattr(mod, "enable_dynamic_shape") and isinstance(mod.enable_dynamic_shape, bool):
            mod.enable_dynamic_shape = True
        params = getattr(mod, "params", None)
        if params is not None and hasattr(params, "enable_dynamic_shape"):
            params.enable_dynamic_shape = True


def et_metadata(
    source: Source, max_seq_length: int, custom_ops: bool, q4_kernels: bool = False
) -> dict[str, Any]:
    from torchchat import executorch_compat as et

    extra: dict[str, Any] = {}
    if q4_kernels:
        from kernels import et_ops

        # Says which kernel library the program needs, so a runtime without
        # it can name the library instead of a missing operator.
        extra[et_ops.METADATA_METHOD] = et_ops.OPS_VERSION
    if source.bos_id is not None:
        extra["get_bos_id"] = source.bos_id
    if source.eos_ids:
        # ExecuTorch's runners stop only on these ids.
        extra["get_eos_ids"] = list(source.eos_ids)
    return et.load_llama_model_metadata(
        use_kv_cache=True,
        use_sdpa_with_kv_cache=custom_ops,
        enable_dynamic_shape=True,
        max_seq_len=max_seq_length,
        max_context_len=max_seq_length,
        n_layers=source.config.n_layers,
        vocab_size=source.config.vocab_size,
        metadata_str=json.dumps(extra),
    )


def exact_embedding(gguf_quantized: dict[str, GGUFQuantized] | None) -> bool:
    """Whether the checkpoint's embedding is GGUF Q8_0 blocks, which an 8-bit
    groups-of-32 embedding can keep exactly."""
    gq = (gguf_quantized or {}).get("tok_embeddings.weight")
    return gq is not None and gq.qtype == "Q8_0"


def q4_transform(
    gguf_quantized: dict[str, GGUFQuantized] | None, embedding: bool, counts: dict[str, int]
) -> Callable:
    """linear:int4 for a .pte: torchchat.quantize's linears (GGUF Q4 blocks
    kept, float weights as Q4_1) and a GGUF Q8_0 unembedding run as
    torchchat::q4_linear / q8_linear, as in a .pt2. With `embedding`, a GGUF
    Q8_0 embedding keeps its blocks in ExecuTorch's own 8-bit embedding op
    (quantized_decomposed::embedding_byte, group 32, fp16 scales), which ET's
    embedding transform would re-fit (HQQ scales) instead.

    It runs after ExecuTorch's transforms: their last one casts the model to
    the compute dtype, which would widen the fp16 scales.
    """

    def transform(model: Model) -> Model:
        import torch

        from torchchat import executorch_compat as et
        from torchchat import quantize as tc_quant

        counts.update(
            tc_quant.quantize_model(model, {"linear:int4": {"groupsize": 32}}, gguf_quantized)
        )
        if any(isinstance(m, tc_quant.Int4Linear) for m in model.modules()):
            raise ExportError(
                "linear:int4 for a .pte needs the q4 op library (//kernels:q4); "
                "torch's int4pack fallback has no ExecuTorch kernel"
            )
        if embedding:
            from kernels import q4

            gq = gguf_quantized["tok_embeddings.weight"]
            qs, scales = q4.pack_q8_0_blocks(gq.blocks, gq.shape)
            vocab, dim = qs.shape
            emb = et.quantized_group_embedding(
                "cpu", vocab, dim, 32, dtype=torch.float32, scales_precision=torch.float16
            )
            emb.weight, emb.scales = qs, scales
            model.transformer.tok_embeddings = emb
            counts["embedding_q8_0"] = 1
        return model

    return transform


def et_quant_transforms(
    q: quant.EtQuant, et_dtype: DType, skip_embedding: bool = False
) -> list[Callable]:
    """ExecuTorch's quantization source transforms for `q`.

    The linear scheme covers the transformer layers only: the output
    projection (the unembedding, tied to the embedding in small models)
    keeps the compute dtype, as torchchat.quantize does in eager, because
    4- and 8-bit logits cost most of the top-1 agreement with fp32.
    """
    from executorch.extension.llm.export.builder import DType

    from torchchat import executorch_compat as et

    transforms: list[Callable] = []
    if q.embedding_quantize and not skip_embedding:
        transforms.append(et.quant_embedding_transform(q.embedding_quantize))
    if q.quantization_mode:
        linear = et.quant_weight_transform(
            q.quantization_mode,
            q.group_size,
            computation_dtype=et_dtype,
            checkpoint_dtype=DType.fp32,
        )

        def layers_only(model: Model) -> Model:
            linear(model.transformer.layers)
            return model

        transforms.append(layers_only)
    return transforms


def rule_sdpa_custom_ops(model: nn.Module) -> nn.Module:
    """Layers with their own attention rule (Gemma's windows, caps, scale)
    keep torchchat's RuleSDPA, which ExecuTorch's custom-op transform does
    not replace; with the custom ops on, it calls llama::custom_sdpa with
    the window as a mask (a score cap stays aten: the op has none)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 (registers llama::)

    from torchchat.model import RuleSDPA

    for m in model.modules():
        if isinstance(m, RuleSDPA):
            m.custom_op = True
    return model


def export_pte(
    model: Model,
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    custom_ops: bool = True,
    stages: Stages | None = None,
    gguf_quantized: dict[str, GGUFQuantized] | None = None,
) -> dict[str, Any]:
    """Lowers an eager fp32 Model to `out_path` through ExecuTorch's LLM flow."""
    import torch
    from executorch.extension.llm.export.builder import DType, LLMEdgeManager
    from executorch.extension.llm.export.partitioner_lib import get_xnnpack_partitioner

    from torchchat import executorch_compat as et

    _quiet_executorch()
    stages = stages or Stages(enabled=False)
    q = quant.for_executorch(spec)
    et_dtype = DType(dtype_name)
    enable_dynamic_shape(model)
    # Prefill of up to max_seq_length - 1 tokens: a Dim's upper bound equal to
    # the cache length trips export's range analysis (as in ET's builder).
    tokens_dim = torch.export.Dim("token_dim", max=max_seq_length - 1)
    example = (
        torch.tensor([[1, 2, 3]], dtype=torch.long)[:, : max_seq_length - 1],
        torch.tensor([0], dtype=torch.long),
    )
    builder = LLMEdgeManager(
        model=model,
        modelname=source.name or "model",
        max_seq_len=max_seq_length,
        use_kv_cache=True,
        example_inputs=example,
        dtype=DType.fp32,
        enable_dynamic_shape=True,
        dynamic_shapes=({1: tokens_dim}, None),
        metadata=et_metadata(source, max_seq_length, custom_ops, q.q4_kernels or q.gguf_kernels),
    )
    counts: dict[str, int] = {}
    exact_emb = q.q4_kernels and q.embedding_quantize == "8,32" and exact_embedding(gguf_quantized)
    with stages("quantize", q.describe() + f", dtype {dtype_name}"):
        transforms = et_quant_transforms(q, et_dtype, exact_emb) + et.get_source_transforms(
            et_dtype,
            checkpoint_dtype=DType.fp32,
            use_kv_cache=True,
            use_sdpa_with_kv_cache=custom_ops,
        )
        if q.q4_kernels:
            transforms.append(q4_transform(gguf_quantized, exact_emb, counts))
        if custom_ops:
            transforms.append(rule_sdpa_custom_ops)
        builder.source_transform(transforms)
        builder.dtype = et_dtype
    with stages("export", "torch.export with a dynamic token dimension"):
        builder.export()
        builder.run_canonical_optimizations()
    bf16 = dtype_name == "bf16"
    with stages("lower", "XNNPACK partitioners, to_executorch"):
        builder.to_edge_transform_and_lower(
            [
                get_xnnpack_partitioner(dynamic_quant_only_partitioner=True, enable_bf16=bf16),
                get_xnnpack_partitioner(dynamic_quant_only_partitioner=False, enable_bf16=bf16),
            ]
        )
        builder.to_executorch()
    with stages("serialize", str(out_path)):
        with atomic_output(str(out_path)) as tmp:
            with open(tmp, "wb") as f:
                builder.export_program.write_to_file(f)
    info: dict[str, Any] = {"metadata": builder.metadata, "quantize": q.describe()}
    if counts:
        info["quantize_counts"] = {k: v for k, v in counts.items() if v}
    return info


def _quiet_executorch() -> None:
    # ExecuTorch's builder configures INFO logging at import and logs whole
    # graphs; stage lines are the progress report here.
    if not os.environ.get("EXPORT_LLM_VERBOSE"):
        logging.getLogger().setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)


# --- AOTInductor ----------------------------------------------------------------------


def pt2_metadata(
    source: Source,
    max_seq_length: int,
    dtype_name: str,
    tokenizer_file: str,
    tokenizer_kind: str,
    quantize: str,
    slots: int = 0,
) -> dict[str, str]:
    from torchchat.artifacts import pt2_metadata as metadata

    return metadata(
        model_name=source.name,
        tokenizer_file=tokenizer_file,
        tokenizer_type=tokenizer_kind,
        bos_id=source.bos_id,
        eos_ids=source.eos_ids,
        max_seq_len=max_seq_length,
        vocab_size=source.config.vocab_size,
        n_layers=source.config.n_layers,
        dtype=dtype_name,
        quantize=quantize,
        slots=slots,
    )


def export_pt2(
    model: Model,
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    metadata: dict[str, str],
    stages: Stages | None = None,
    gguf_quantized: dict[str, GGUFQuantized] | None = None,
) -> dict[str, Any]:
    from torchchat import aoti
    from torchchat import quantize as tc_quant
    from torchchat.model import SlotModel, attend_filled_cache

    stages = stages or Stages(enabled=False)
    # The graph the CLI compiles too: attention over the filled cache only,
    # whatever max_seq_length is.
    model = attend_filled_cache(model)
    aoti_spec = {k: v for k, v in quant.for_aoti(spec).items() if k != "gguf"}
    counts: dict[str, int] = {}
    if aoti_spec:
        with stages("quantize", json.dumps(aoti_spec)):
            counts = tc_quant.quantize_model(model, aoti_spec, gguf_quantized)
    if counts or not metadata.get("quantize"):
        metadata = dict(metadata, quantize=json.dumps({k: v for k, v in counts.items() if v}))
    slots = int(metadata.get("slots", 0))
    program = SlotModel(model, slots, traceable=True) if slots else model
    with stages("lower", "torch.export, AOTInductor compile and package"):
        aoti.compile_package(program, out_path, metadata)
    return {"metadata": metadata, "quantize": counts}


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_llm",
        description="Export an LLM to an ExecuTorch .pte and/or an AOTInductor .pt2.",
    )
    p.add_argument(
        "model",
        nargs="?",
        help="model alias or checkpoint path (default: the built-in SmolLM2-135M-Instruct)",
    )
    p.add_argument("--checkpoint-path", help="HF directory, Meta directory/.pth or .gguf file")
    p.add_argument("--gguf-path", help="a .gguf file")
    p.add_argument("--tokenizer-path", help="tokenizer file (default: from the checkpoint)")
    p.add_argument("--output-pte-path", help="write an ExecuTorch program here")
    p.add_argument("--output-aoti-package-path", help="write an AOTInductor package (.pt2) here")
    p.add_argument(
        "--quantize", help="JSON, a .json file, or a preset: " + ", ".join(quant.PRESETS)
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
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


def _outputs(args: argparse.Namespace) -> dict[str, Path]:
    outs = {}
    if args.output_pte_path:
        outs["pte"] = user_path(args.output_pte_path)
        if outs["pte"].suffix != ".pte":
            raise ExportError(f"--output-pte-path must end in .pte: {outs['pte']}")
    if args.output_aoti_package_path:
        outs["pt2"] = user_path(args.output_aoti_package_path)
        if outs["pt2"].suffix != ".pt2":
            raise ExportError(f"--output-aoti-package-path must end in .pt2: {outs['pt2']}")
    if not outs:
        raise ExportError("give --output-pte-path and/or --output-aoti-package-path")
    return outs


def run(args: argparse.Namespace, out: TextIO | None = None) -> dict[str, Any]:
    from export import tokenizer_files

    out = out or sys.stderr
    stages = Stages(out, enabled=not args.quiet)
    outs = _outputs(args)
    spec = quant.parse(args.quantize)
    dtype_name = quant.dtype_of(spec, args.dtype or "fp32")
    # Reject what a target cannot do before minutes of work.
    if "pte" in outs:
        q = quant.for_executorch(spec)
        if (q.q4_kernels or q.gguf_kernels) and dtype_name != "fp32":
            raise ExportError(f"linear:int4 in a .pte computes in fp32; drop --dtype {dtype_name}")
        if dtype_name == "fp16":
            raise ExportError(
                "--dtype fp16 is not supported for a .pte (XNNPACK takes fp32 or bf16)"
            )
    if "pt2" in outs:
        quant.for_aoti(spec)
    if args.slots:
        if args.slots < 2 or "pte" in outs:
            raise ExportError(
                "--slots takes 2 or more, and only with --output-aoti-package-path "
                "(a .pte runs one sequence)"
            )
        if args.full_logits:
            raise ExportError("--slots returns each sequence's last logits; drop --full-logits")
    if args.checkpoint_path and args.gguf_path:
        raise ExportError("give only one of --checkpoint-path and --gguf-path")
    ckpt_path = resolve_checkpoint(args.model, user_path(args.checkpoint_path or args.gguf_path))
    tok_override = user_path(args.tokenizer_path)
    for kind, path in outs.items():
        check_writable(str(path))
    results: dict[str, Any] = {}

    with stages("load", str(ckpt_path)):
        source = load_source(ckpt_path, tok_override)
        max_seq_length = check_max_seq_length(source.config, args.max_seq_length)
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
        if kind == "pte":
            with stages("load", f"weights, max_seq_length {max_seq_length}"):
                if "gguf" in spec:
                    model = build_native(source, max_seq_length)[0]
                else:
                    model = build(source, "fp32", max_seq_length)
                model.transformer.generate_full_logits = args.full_logits
            info = export_pte(
                model,
                source,
                path,
                spec,
                dtype_name,
                max_seq_length,
                args.et_custom_ops,
                stages,
                source.ckpt.gguf_quantized,
            )
        else:
            # A GGUF's own formats by default, as generate runs it.
            native = "gguf" in spec or (
                not spec and args.dtype is None and source.ckpt.format == "gguf"
            )
            native_counts: dict[str, int] = {}
            with stages("load", f"weights, {dtype_name}, max_seq_length {max_seq_length}"):
                if native:
                    model, native_counts = build_native(source, max_seq_length)
                else:
                    model = build(source, dtype_name, max_seq_length)
                model.transformer.generate_full_logits = args.full_logits
            meta = pt2_metadata(
                source,
                max_seq_length,
                dtype_name,
                tf.file_name,
                tf.kind,
                json.dumps({f"gguf {k}": v for k, v in native_counts.items()}),
                args.slots,
            )
            pt2_spec = {} if native else spec
            info = export_pt2(
                model,
                source,
                path,
                pt2_spec,
                dtype_name,
                max_seq_length,
                meta,
                stages,
                source.ckpt.gguf_quantized,
            )
        del model
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


def _known_errors():
    from export.tokenizer_files import TokenizerFilesError
    from torchchat.artifacts import ArtifactError
    from torchchat.checkpoint import CheckpointError
    from torchchat.errors import UserError
    from torchchat.model import ConfigError
    from torchchat.registry import RegistryError
    from torchchat.tokenizer import TokenizerError

    return (
        ExportError,
        UserError,
        quant.QuantizeError,
        OutputPathError,
        CheckpointError,
        ConfigError,
        RegistryError,
        TokenizerError,
        TokenizerFilesError,
        ArtifactError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = _known_errors()
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
