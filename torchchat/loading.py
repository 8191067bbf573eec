"""Loading a model and its tokenizer: the one way every command does it.

`LoadOptions` says what to load (an alias, a checkpoint path, or an exported
`.pt2`/`.pte`) and how (dtype, --quantize, context length, compile mode,
device, slots); `load(options)` returns a `Loaded`. The CLI, the server,
eval and the benchmarks all call it. `add_model_args` declares its flags and
`options_from_args` reads them back. Export, which builds from a checkpoint
for another runtime, shares the steps before the build: `add_source_args`,
`source_options`, `resolve_source` and `load_tokenizer`.

With `compile="auto"` on the CPU, a checkpoint is compiled with AOTInductor
on first use into the user cache (torchchat.compile_cache) and later loads
open the cached package without reading the checkpoint's weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchchat.errors import UserError
from torchchat.paths import user_path

if TYPE_CHECKING:
    from torchchat.checkpoint import Checkpoint
    from torchchat.generate import LLMModel, Slot
    from torchchat.tokenizer import Tokenizer

COMPILE_MODES = ("auto", "aoti", "torch", "none")
DTYPE_CHOICES = ("fp32", "bf16", "fp16")
# Suffixes that make a positional MODEL a path rather than an alias.
_PATH_SUFFIXES = (".gguf", ".pte", ".pt2", ".pth")


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how. Exactly one source: `model` (an alias, or a path
    to a checkpoint or artifact), `checkpoint` or `artifact`."""

    model: str | None = None
    checkpoint: Path | None = None  # a .gguf, an HF or Meta directory, a .pth
    artifact: Path | None = None  # an exported .pt2 or .pte
    tokenizer: Path | None = None
    dtype: str | None = None  # None: the checkpoint's own precision (fp32 compute)
    quantize: None | str | dict[str, Any] = None
    max_seq_length: int | None = None
    compile: str = "auto"
    device: str = "cpu"
    slots: int = 0  # KV-cache rows of a package compiled here (the server's); 0: batch 1
    quiet: bool = False  # no first-run compile progress on stderr
    # llama.cpp's mmproj GGUF: a vision tower for the (text) checkpoint.
    mmproj: Path | None = None
    # GGUF decode's activation precision: "int8" (llama.cpp's, the default)
    # or "int16" (closer to the dequantized model, slower); None: unchanged.
    decode_x: str | None = None
    # Pipeline parallelism (torchchat.pipeline): this many ranks, launched by
    # torchrun or pipeline.launch_local, each loading only its own stage;
    # 0 or 1: the whole model here. Prompts go through in micro-batches of
    # at least `pipeline_microbatch` tokens; rank 0 waits at most
    # `pipeline_timeout_s` for an answer to a step (0: no limit).
    pipeline: int = 0
    pipeline_microbatch: int = 32
    pipeline_timeout_s: float = 120.0


@dataclass
class Loaded:
    """The loaded model and tokenizer. On a compile-cache miss the model is
    compiled when the first slot is made, after the caller has checked its
    input, so a bad prompt never waits for a compile."""

    model: LLMModel | None
    step: Callable | None  # a compiled decode step, or None
    tokenizer: Tokenizer
    info: dict[str, Any]
    load_start_ms: float
    load_end_ms: float
    max_seq_length: int
    compile: Callable[[], tuple[LLMModel, dict[str, Any]]] | None = None
    device: str = field(default="cpu")
    # The vision tower (torchchat.vision.Vision) of an eager model that has one.
    vision: Any | None = None

    def ensure_model(self) -> LLMModel:
        """The model, compiling it first on a cache miss."""
        from torchchat.generate import now_ms

        if self.model is None:
            assert self.compile is not None
            self.model, info = self.compile()
            self.info.update(info)
            self.load_end_ms = now_ms()
        return self.model

    def slot(self) -> Slot:
        from torchchat.generate import Slot

        return Slot(self.ensure_model(), self.step, self.device)

    def check_fits(self, n_new: int) -> None:
        from torchchat.generate import check_fits

        check_fits(self.max_seq_length, n_new)


# --- flags ------------------------------------------------------------------------


def add_source_args(p: argparse.ArgumentParser, artifacts: bool = True) -> None:
    """The flags that name a model and its tokenizer, for every command that
    loads one; export reads checkpoints only (`artifacts=False`)."""
    what = "a checkpoint, .gguf, .pt2 or .pte" if artifacts else "a checkpoint or .gguf"
    p.add_argument(
        "model",
        nargs="?",
        help=f"model alias (see `torchchat list`) or a path to {what}; "
        "default: the built-in SmolLM2-135M-Instruct",
    )
    p.add_argument("--checkpoint-path", help="HF directory, Meta directory/.pth or .gguf file")
    p.add_argument("--gguf-path", help="a .gguf file")
    p.add_argument("--tokenizer-path", help="tokenizer file (default: from the checkpoint)")
    if artifacts:
        p.add_argument(
            "--aoti-package-path", help="an AOTInductor .pt2 package exported by //export"
        )
        p.add_argument("--pte-path", help="an ExecuTorch .pte program exported by //export")
    else:
        p.set_defaults(aoti_package_path=None, pte_path=None)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose and load a model (generate, chat, server, eval)."""
    add_source_args(p)
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        help="compute dtype (default fp32). A quantized GGUF runs in its own precision unless "
        "--dtype or --quantize is given; --dtype fp32 dequantizes it",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--compile",
        nargs="?",
        const="torch",
        default="auto",
        choices=COMPILE_MODES,
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
    p.add_argument(
        "--mmproj",
        metavar="PATH",
        help="llama.cpp's mmproj GGUF beside a text checkpoint: its vision tower (Gemma 3's or SmolVLM's), "
        "so the model sees images; runs the eager model",
    )
    p.add_argument(
        "--decode-x",
        choices=["int8", "int16"],
        help="a GGUF's decode rounds activations per block of 32 to int8 (default, as llama.cpp "
        "does; fastest) or int16 (closer to the dequantized model, slower)",
    )
    p.add_argument("--quiet", action="store_true", help="no stats or progress lines on stderr")


def source_options(ns: argparse.Namespace, **fields: Any) -> LoadOptions:
    """LoadOptions naming the model add_source_args' flags give; `fields`
    set the rest."""
    if ns.checkpoint_path and ns.gguf_path:
        raise UserError("give only one of --checkpoint-path and --gguf-path")
    if ns.aoti_package_path and ns.pte_path:
        raise UserError("give only one of --aoti-package-path and --pte-path")
    source: dict[str, Any] = dict(
        model=ns.model,
        checkpoint=user_path(ns.gguf_path or ns.checkpoint_path),
        artifact=user_path(ns.aoti_package_path or ns.pte_path),
        tokenizer=user_path(ns.tokenizer_path),
    )
    return LoadOptions(**{**source, **fields})


def options_from_args(ns: argparse.Namespace, **overrides: Any) -> LoadOptions:
    """LoadOptions from add_model_args' flags; `overrides` replace fields."""
    fields: dict[str, Any] = dict(
        dtype=ns.dtype,
        quantize=ns.quantize,
        max_seq_length=ns.max_seq_length,
        compile=ns.compile,
        device=ns.device,
        quiet=ns.quiet,
        decode_x=getattr(ns, "decode_x", None),
        mmproj=user_path(getattr(ns, "mmproj", None)),
        pipeline=getattr(ns, "pipeline_parallel", None) or 0,
    )
    if getattr(ns, "pipeline_microbatch", None) is not None:
        fields["pipeline_microbatch"] = ns.pipeline_microbatch
    if getattr(ns, "pipeline_timeout_s", None) is not None:
        fields["pipeline_timeout_s"] = ns.pipeline_timeout_s
    fields.update(overrides)
    return source_options(ns, **fields)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can cause while loading or running a model: one line
    each. Anything else is a bug and keeps its traceback."""
    from torchchat.artifacts import ArtifactError
    from torchchat.checkpoint import CheckpointError
    from torchchat.config import ConfigError
    from torchchat.generate import ContextOverflow
    from torchchat.pipeline import PipelineLost
    from torchchat.quantize import QuantizeError
    from torchchat.registry import RegistryError
    from torchchat.tokenizer import TokenizerError
    from torchchat.vision import ImageError

    return (
        UserError,
        PipelineLost,
        ImageError,
        ArtifactError,
        CheckpointError,
        ConfigError,
        ContextOverflow,
        QuantizeError,
        RegistryError,
        TokenizerError,
    )


# --- sources ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the model comes from: a checkpoint to build, or an artifact."""

    checkpoint: Path | None = None
    artifact: Path | None = None

    @property
    def name(self) -> str:
        p = self.artifact or self.checkpoint
        assert p is not None
        return p.stem if p.is_file() else p.name


def _as_path(model: str) -> Path | None:
    """A positional MODEL that names an existing file or directory."""
    if os.sep not in model and not model.endswith(_PATH_SUFFIXES):
        return None
    p = user_path(model)
    return p if p is not None and p.exists() else None


def resolve_source(options: LoadOptions) -> Source:
    """The checkpoint or artifact the options name; an alias resolves to its
    checkpoint, which must be downloaded."""
    from torchchat import registry

    given = [x for x in (options.checkpoint, options.artifact) if x is not None]
    if options.model and given:
        raise UserError(f"give either a model ({options.model}) or a path flag, not both")
    if len(given) > 1:
        raise UserError("give either a checkpoint or an exported artifact, not both")
    if options.artifact is not None:
        return Source(artifact=options.artifact)
    if options.checkpoint is not None:
        return Source(checkpoint=options.checkpoint)
    path = _as_path(options.model) if options.model else None
    if path is not None:
        if path.suffix in (".pte", ".pt2"):
            return Source(artifact=path)
        return Source(checkpoint=path)
    entry = registry.resolve(options.model or registry.DEFAULT_MODEL)
    if not registry.is_downloaded(entry):
        raise UserError(f"{entry.name} is not downloaded; run `torchchat download {options.model}`")
    return Source(checkpoint=registry.checkpoint_path(entry))


def sees_images(options: LoadOptions) -> bool:
    """Whether the checkpoint the options name has a vision tower (a Gemma 3
    4B-and-up or a SmolVLM HF directory), read from its config.json without
    loading it."""
    import json

    if options.mmproj is not None:
        return True
    try:
        source = resolve_source(options)
    except UserError:
        return False
    d = source.checkpoint
    if d is None or not (d / "config.json").is_file():
        return False
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") in ("gemma3", "smolvlm", "idefics3") and "vision_config" in cfg


def dtype_of(options: LoadOptions, spec: dict[str, Any]) -> str:
    """The compute dtype: --quantize's precision, else --dtype, else fp32."""
    from torchchat.config import DTYPE_NAMES

    name = spec.get("precision", {}).get("dtype", options.dtype or "fp32")
    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {name!r} (known: {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[name]


# --- building ---------------------------------------------------------------------


def runs_native(options: LoadOptions, spec: dict[str, Any], ckpt: Checkpoint) -> bool:
    """Whether a checkpoint runs in its own formats, read in place: a GGUF,
    with neither --dtype nor --quantize asking for a conversion."""
    return not spec and options.dtype is None and ckpt.format == "gguf"


def build_model(
    options: LoadOptions, ckpt: Checkpoint, spec: dict[str, Any], dtype_name: str
) -> tuple[Any, Callable | None, dict[str, Any]]:
    """The eager model: a GGUF in its own formats, read in place, unless
    --dtype or --quantize asks for a conversion; then the float model,
    quantized as asked. Device, and --compile torch's step."""
    import torch

    from torchchat import checkpoint as ckpt_mod
    from torchchat import quantize as quant_mod
    from torchchat.config import DTYPES
    from torchchat.model import attend_filled_cache

    if runs_native(options, spec, ckpt):
        model, counts = ckpt_mod.load_native(ckpt, options.max_seq_length)
        quantize = {f"gguf {k}": v for k, v in counts.items()}
    else:
        model = ckpt_mod.load_model(ckpt, DTYPES[dtype_name], options.max_seq_length, "cpu")
        # A pipeline stage's model counts its layers from 0.
        gguf = {ckpt_mod.stage_name(k, ckpt.layers): t for k, t in ckpt.gguf_quantized.items()}
        counts = quant_mod.quantize_model(model, spec, gguf) if spec else {}
        quantize = {k: v for k, v in counts.items() if v}
    model = attend_filled_cache(model).to(options.device)
    step = None
    if options.compile == "torch":
        # FilledCacheSDPA reads the position with .item(); captured, it stays in
        # the graph instead of splitting every layer in two.
        torch._dynamo.config.capture_scalar_outputs = True
        step = torch.compile(model, dynamic=False, fullgraph=True)
    info = {
        "checkpoint": str(ckpt.path),
        "format": ckpt.format,
        "dtype": dtype_name,
        "quantize": quantize,
    }
    return model, step, info


def tokenizer_source(ckpt: Checkpoint) -> dict[str, Any]:
    """What loading the tokenizer needs, from a Checkpoint (JSON-able: the
    compile cache keeps it beside a package)."""
    return {
        "tokenizer_path": str(ckpt.tokenizer_path) if ckpt.tokenizer_path else None,
        "chat_template": ckpt.chat_template,
        "bos_id": ckpt.bos_id,
        "eos_ids": list(ckpt.eos_ids),
        "add_bos": ckpt.add_bos,
    }


def load_tokenizer(source: dict[str, Any], override: Path | None = None) -> tuple[Tokenizer, Path]:
    """The tokenizer `tokenizer_source` describes, read from `override` (a
    --tokenizer-path) when given, and the file it was read from."""
    from torchchat import tokenizer as tok_mod

    tok_path = override or source.get("tokenizer_path")
    if tok_path is None:
        raise UserError(
            "no tokenizer found next to the checkpoint or artifact; pass --tokenizer-path"
        )
    tok = tok_mod.load(
        Path(tok_path),
        chat_template=source.get("chat_template"),
        bos_id=source.get("bos_id"),
        eos_ids=tuple(source.get("eos_ids") or ()),
        add_bos=source.get("add_bos"),
    )
    return tok, Path(tok_path)


class CompileProgress:
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
            f"(under a minute on 2 cores) and later runs load it in about a second. Cached in "
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


@dataclass
class _Built:
    """A model ready to run, or the means to compile one (cache miss)."""

    model: Any | None
    step: Callable | None
    info: dict[str, Any]
    tokenizer: dict[str, Any]
    max_seq_length: int
    compile: Callable[[], tuple[Any, dict[str, Any]]] | None = None
    vision: Any | None = None


def _from_compile_cache(
    options: LoadOptions, checkpoint: Path, spec: dict[str, Any], dtype_name: str
) -> _Built:
    """The package for these options from the compile cache. A hit never
    reads the checkpoint's weights (a GGUF's are mmapped and handed to the
    code-only package in place); a miss builds the eager model and returns
    `compile` to make the package (with `options.slots` cache rows)."""
    import warnings

    from torchchat import checkpoint as ckpt_mod
    from torchchat import compile_cache
    from torchchat.artifacts import ArtifactError

    settings: dict[str, Any] = {
        "quantize": spec,
        "dtype": options.dtype,
        "resolved_dtype": dtype_name,
        "max_seq_length": options.max_seq_length,
    }
    if options.slots:
        settings["slots"] = options.slots
    k = compile_cache.key(checkpoint, settings)
    entry = compile_cache.lookup(k)
    if entry is not None:
        try:
            constants = None
            if entry.get("external_weights"):
                ckpt = ckpt_mod.load_checkpoint(checkpoint)
                constants = compile_cache.constants(k, ckpt)
            backend = compile_cache.open_entry(k, constants)
            info = dict(entry["info"], compiled=str(backend.path))
            return _Built(backend, None, info, entry["tokenizer"], backend.max_seq_length)
        except ArtifactError as e:
            print(f"torchchat: compiling again: {e}", file=sys.stderr)
            compile_cache.remove(k)
    ckpt = ckpt_mod.load_checkpoint(checkpoint)
    model, _, info = build_model(options, ckpt, spec, dtype_name)
    native = runs_native(options, spec, ckpt)
    tok_src = tokenizer_source(ckpt)

    def compile() -> tuple[Any, dict[str, Any]]:
        program = compile_cache.program(model, options.slots)
        progress = CompileProgress(checkpoint.name, options.quiet)
        try:
            # torch.export warns about its own internals (pytree deprecations).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                constants = compile_cache.store(
                    k,
                    settings,
                    program,
                    ckpt,
                    dtype_name,
                    info["quantize"],
                    info,
                    tok_src,
                    progress.stage,
                    options.slots,
                    external_weights=native,
                )
        finally:
            progress.close()
        backend = compile_cache.open_entry(k, constants)
        return backend, {"compiled": str(backend.path)}

    return _Built(None, None, info, tok_src, model.max_seq_length, compile)


def _from_artifact(options: LoadOptions, path: Path) -> _Built:
    from torchchat import artifacts

    if path.suffix not in (".pt2", ".pte"):
        raise UserError(f"{path}: an exported artifact is a .pt2 or a .pte file")
    backend = artifacts.load(path, options.device)
    info = {"backend": type(backend).__name__, "artifact": str(backend.path)}
    built = _Built(
        backend, None, info, {"tokenizer_path": backend.tokenizer_path}, backend.max_seq_length
    )
    if isinstance(backend, artifacts.Pt2Model):
        # A package exported from Gemma 3 with its vision tower sees images.
        built.vision = backend.vision()
    return built


def _pipeline_stage(
    options: LoadOptions, source: Source, spec: dict[str, Any], dtype_name: str
) -> _Built:
    """This rank's stage of a pipeline (torchchat.pipeline), read from the
    checkpoint alone: on rank 0 the Pipeline that runs every stage, on the
    others the stage that pipeline.serve runs."""
    from torchchat import checkpoint as ckpt_mod
    from torchchat import pipeline

    if source.checkpoint is None:
        raise UserError(
            "--pipeline-parallel splits a checkpoint's layers; an exported .pt2 or .pte runs whole"
        )
    if options.compile in ("aoti", "torch"):
        raise UserError("--pipeline-parallel runs each stage eager; drop --compile")
    if options.device != "cpu":
        raise UserError("--pipeline-parallel runs on the CPU (gloo)")
    rank = pipeline.join(options.pipeline)
    ckpt = ckpt_mod.load_checkpoint(source.checkpoint, stage=rank.layers)
    model, _, info = build_model(options, ckpt, spec, dtype_name)
    stage = pipeline.StageModel(model, rank)
    info["pipeline"] = {"ranks": rank.world, "microbatch": options.pipeline_microbatch}
    out: Any = stage
    if rank.first:
        out = pipeline.Pipeline(stage, options.pipeline_microbatch, options.pipeline_timeout_s)
    return _Built(out, None, info, tokenizer_source(ckpt), model.max_seq_length)


def serve_stage(options: LoadOptions) -> None:
    """A pipeline rank past 0 (torchrun's, or launch_local's): loads its
    stage and runs it until rank 0 closes the pipeline (PipelineLost when
    rank 0 goes silent or away)."""
    from torchchat import pipeline

    stage = load(options).ensure_model()
    assert isinstance(stage, pipeline.StageModel), "a rank past 0 loads its stage"
    pipeline.serve(stage, options.pipeline_timeout_s)


def _check(options: LoadOptions) -> None:
    import torch

    if options.compile not in COMPILE_MODES:
        raise UserError(f"unknown compile mode {options.compile!r}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build has no usable CUDA device")
    if options.max_seq_length is not None and options.max_seq_length < 2:
        raise UserError("--max-seq-length must be at least 2")
    if options.compile == "aoti" and options.device != "cpu":
        raise UserError("--compile aoti runs on the CPU; use --compile torch or none")
    if options.slots < 0:
        raise UserError("slots must not be negative")


def compile_mode(options: LoadOptions) -> str:
    """`auto` made concrete: AOTInductor on the CPU, eager elsewhere."""
    if options.compile == "auto":
        return "aoti" if options.device == "cpu" else "none"
    return options.compile


def set_decode_x(name: str) -> None:
    """GGUF decode's activation precision for this process: the kernels
    loaded now (the torch ops) and those loaded later (ExecuTorch's, which
    read TORCHCHAT_GGML_X once)."""
    from kernels.ggml import ops as ggml_ops

    os.environ["TORCHCHAT_GGML_X"] = name
    ggml_ops.set_decode_x(name)


def load(options: LoadOptions) -> Loaded:
    """The model and tokenizer `options` name."""
    from torchchat import checkpoint as ckpt_mod
    from torchchat import quantize as quant_mod
    from torchchat.generate import now_ms

    start = now_ms()
    _check(options)
    if options.decode_x:
        set_decode_x(options.decode_x)
    spec = quant_mod.parse(options.quantize)
    dtype_name = dtype_of(options, spec)
    source = resolve_source(options)
    if options.pipeline > 1:
        built = _pipeline_stage(options, source, spec, dtype_name)
    elif source.artifact is not None:
        built = _from_artifact(options, source.artifact)
    elif compile_mode(options) == "aoti":
        assert source.checkpoint is not None
        built = _from_compile_cache(options, source.checkpoint, spec, dtype_name)
    else:
        assert source.checkpoint is not None  # resolve_source gives one or the other
        ckpt = ckpt_mod.load_checkpoint(source.checkpoint)
        model, step, info = build_model(options, ckpt, spec, dtype_name)
        built = _Built(model, step, info, tokenizer_source(ckpt), model.max_seq_length)
        built.vision = _vision(ckpt, dtype_name, options.device)
    tok, tok_path = load_tokenizer(built.tokenizer, options.tokenizer)
    built.info["tokenizer"] = str(tok_path)
    if options.mmproj is not None:
        if built.model is None or not hasattr(built.model, "config"):
            raise UserError("--mmproj runs the eager model: add --compile none")
        if built.vision is not None:
            raise UserError("--mmproj: this checkpoint has its own vision tower")
        built.vision = _mmproj_vision(options, built.model.config.dim, tok, dtype_name)
        built.info["mmproj"] = str(options.mmproj)
    return Loaded(
        built.model,
        built.step,
        tok,
        built.info,
        start,
        now_ms(),
        built.max_seq_length,
        built.compile,
        options.device,
        built.vision,
    )


def _mmproj_vision(options: LoadOptions, dim: int, tok: Tokenizer, dtype_name: str) -> Any:
    """The vision tower of an mmproj GGUF (Gemma 3's or SmolVLM's); its
    image tokens are the text tokenizer's."""
    import torch

    from torchchat.checkpoint.mmproj import load_mmproj, load_mmproj_smolvlm, projector_type
    from torchchat.config import DTYPES
    from torchchat.vision import Vision, build_encoder
    from torchchat.vision_smolvlm import IMAGE, build_vision

    assert options.mmproj is not None
    if not options.mmproj.is_file():
        raise UserError(f"--mmproj {options.mmproj}: no such file")
    dtype = DTYPES.get(dtype_name, torch.float32)
    smolvlm = projector_type(options.mmproj) == "idefics3"
    ids = []
    texts = (IMAGE,) if smolvlm else ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
    for text in texts:
        got = tok.encode(text, bos=False)
        if len(got) != 1:
            raise UserError(f"--mmproj: the model's tokenizer has no {text} token")
        ids.append(got[0])
    if smolvlm:
        smol, smol_weights = load_mmproj_smolvlm(options.mmproj, dim, ids[0])
        vision = build_vision(smol, smol_weights, dtype)
        vision.encoder.to(options.device)
        return vision
    config, weights = load_mmproj(options.mmproj, dim, (ids[0], ids[1], ids[2]))
    return Vision(build_encoder(config, weights, dtype).to(options.device))


def _vision(ckpt: Checkpoint, dtype_name: str, device: str) -> Any | None:
    """The checkpoint's vision tower, in the model's precision."""
    if ckpt.vision is None:
        return None
    import torch

    from torchchat.config import DTYPES
    from torchchat.vision import Vision, VisionConfig, build_encoder
    from torchchat.vision_smolvlm import build_vision

    dtype = DTYPES.get(dtype_name, torch.float32)
    if not isinstance(ckpt.vision, VisionConfig):
        vision = build_vision(ckpt.vision, ckpt.vision_weights, dtype)
        vision.encoder.to(device)
        return vision
    return Vision(build_encoder(ckpt.vision, ckpt.vision_weights, dtype).to(device))
