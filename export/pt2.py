"""The AOTInductor path: an eager model to a .pt2 package.

`torch.export` of torchchat.model.Model (or the server's SlotModel, with
slots) and AOTInductor through torchchat.aoti.compile_package, the same
compile the CLI's compile-on-first-use runs. The package metadata is what
aoti_run and torchchat.artifacts read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export import quant, vision_pt2, vision_pte
from export.source import Source, build, build_native
from export.stages import Stages

if TYPE_CHECKING:
    import torch
    from torch import nn

    from export.tokenizer_files import TokenizerFiles
    from torchchat.checkpoint import GGUFQuantized
    from torchchat.model import Model


def export(
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    tokenizer: TokenizerFiles,
    native: bool,
    full_logits: bool = False,
    slots: int = 0,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """`source`'s model as a .pt2 at `out_path`: with `native`, a GGUF in
    its own formats, as generate runs it; else `dtype_name` weights with
    `spec`'s schemes."""
    stages = stages or Stages(enabled=False)
    native_counts: dict[str, int] = {}
    with stages("load", f"weights, {dtype_name}, max_seq_length {max_seq_length}"):
        if native:
            model, native_counts = build_native(source, max_seq_length)
        else:
            model = build(source, dtype_name, max_seq_length)
        model.transformer.generate_full_logits = full_logits
        encoder = None
        if vision_pt2.wanted(source, native, full_logits, slots):
            encoder = vision_pt2.encoder(source)
    meta = metadata(
        source,
        max_seq_length,
        dtype_name,
        tokenizer.file_name,
        tokenizer.kind,
        json.dumps({f"gguf {k}": v for k, v in native_counts.items()}),
        slots,
    )
    if encoder is not None:
        meta.update(vision_pt2.metadata(source))
    return export_model(
        model,
        source,
        out_path,
        {} if native else spec,
        dtype_name,
        max_seq_length,
        meta,
        stages,
        source.ckpt.gguf_quantized,
        encoder,
    )


def metadata(
    source: Source,
    max_seq_length: int,
    dtype_name: str,
    tokenizer_file: str,
    tokenizer_kind: str,
    quantize: str,
    slots: int = 0,
) -> dict[str, str]:
    """The package metadata aoti_run and torchchat.artifacts read."""
    from torchchat import artifacts

    return artifacts.pt2_metadata(
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


def export_model(
    model: Model,
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    meta: dict[str, str],
    stages: Stages | None = None,
    gguf_quantized: dict[str, GGUFQuantized] | None = None,
    encoder: tuple[nn.Module, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Quantizes an eager model as `spec` asks and compiles it to `out_path`
    with `meta` (`metadata`'s keys; its quantize entry is replaced by what
    was quantized here, if anything was). With `encoder` (a vision tower
    and its example pixels) the package is export.vision_pt2's."""
    from torchchat import aoti
    from torchchat import quantize as tc_quant
    from torchchat.model import attend_filled_cache
    from torchchat.slots import SlotModel

    stages = stages or Stages(enabled=False)
    # The graph the CLI compiles too: attention over the filled cache only,
    # whatever max_seq_length is.
    model = attend_filled_cache(model)
    aoti_spec = {k: v for k, v in quant.for_aoti(spec).items() if k != "gguf"}
    counts: dict[str, int] = {}
    if aoti_spec:
        with stages("quantize", json.dumps(aoti_spec)):
            counts = tc_quant.quantize_model(model, aoti_spec, gguf_quantized)
    if counts or not meta.get("quantize"):
        meta = dict(meta, quantize=json.dumps({k: v for k, v in counts.items() if v}))
    slots = int(meta.get("slots", 0))
    program: Any = SlotModel(model, slots, traceable=True) if slots else model
    if encoder is not None:
        program = vision_pt2.ImageDecoder(model, vision_pte.bidirectional(source))
    with stages("lower", "torch.export, AOTInductor compile and package"):
        aoti.compile_package(program, out_path, meta, encoder=encoder)
    return {"metadata": meta, "quantize": counts}
