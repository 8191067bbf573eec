"""A checkpoint's weights in the model: as float tensors, or a GGUF's in its
own formats, read in place.

`load_model` loads float weights (what --dtype and --quantize start from).
`load_native` never materializes the model in float: it builds it on the
meta device and installs each GGUF tensor as the file holds it, a view of
the mmapped file (kernels/ggml: every common block format, F16 and BF16 run
as they are; F32 tensors become float views), so a model's memory is the
file's pages plus its KV cache, as llama.cpp's is.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from torchchat.checkpoint.base import (
    Checkpoint,
    CheckpointError,
    GGUFTensor,
    checkpoint_name,
    in_stage,
    stage_name,
)
from torchchat.model import Model, build_model, fold_multipliers


def load_model(
    ckpt: Checkpoint,
    dtype: torch.dtype = torch.float32,
    max_seq_length: int | None = None,
    device: str = "cpu",
    full_logits: bool = False,
) -> Model:
    """Builds the model for `ckpt` and loads its float weights (before
    quantizing): a pipeline stage's checkpoint builds that stage alone
    (build_model's `layers`)."""
    layers = ckpt.layers
    sd = {k: v for k, v in ckpt.state_dict.items() if in_stage(k, ckpt.config, layers)}
    config = fold_multipliers(ckpt.config, sd)
    model = build_model(config, dtype, max_seq_length, "cpu", full_logits, layers=layers)
    if layers is not None:
        t = model.transformer
        if t.output is not None and "output.weight" not in sd:
            sd["output.weight"] = sd["tok_embeddings.weight"]  # tied
        drop = {"tok_embeddings.weight"} if t.tok_embeddings is None else set()
        drop |= {"output.weight"} if t.output is None else set()
        sd = {stage_name(k, layers): v for k, v in sd.items() if k not in drop}
    try:
        model.load_weights(sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path}: {str(e).splitlines()[0]}") from e
    if ckpt.rope_freq_factors is not None:
        model.set_rope_freq_factors(ckpt.rope_freq_factors)
    return model.to(device)


def _output_scales(ckpt: Checkpoint) -> dict[str, float]:
    """Granite's multipliers as output scales per weight (fold_multipliers'
    folding, kept out of the weights: a block's own scales cannot take them
    exactly)."""
    c = ckpt.config
    scales: dict[str, float] = {}
    if c.embedding_multiplier != 1.0:
        scales["tok_embeddings.weight"] = float(c.embedding_multiplier)
    if c.logits_scaling != 1.0:
        scales["output.weight"] = 1.0 / float(c.logits_scaling)
    q_scale = (
        1.0 if c.attention_multiplier is None else c.attention_multiplier * math.sqrt(c.head_dim)
    )
    for i in range(c.n_layers):
        p = f"layers.{i}."
        if c.residual_multiplier != 1.0:
            scales[p + "attention.wo.weight"] = float(c.residual_multiplier)
            scales[p + "feed_forward.w2.weight"] = float(c.residual_multiplier)
        if q_scale != 1.0:
            scales[p + "attention.wq.weight"] = float(q_scale)
    return scales


def _float_view(t: GGUFTensor) -> torch.Tensor:
    """An F32 tensor's values, a view of the file."""
    return torch.from_numpy(t.blocks.view("<f4").reshape(t.shape))


def _blocks(t: GGUFTensor, views: dict[int, torch.Tensor]) -> torch.Tensor:
    """The tensor's bytes as one torch tensor per array, so that a tied
    embedding and output share a single constant."""
    key = id(t.blocks)
    if key not in views:
        views[key] = torch.from_numpy(t.blocks)
    return views[key]


def _native_linear(
    t: GGUFTensor,
    out_features: int,
    in_features: int,
    bias: torch.Tensor | None,
    scale: float,
    views: dict[int, torch.Tensor],
) -> tuple[nn.Module, str]:
    """The module that runs a GGUF weight as it is, and how (for the counts)."""
    from kernels.ggml import ops

    if (t.shape[0], t.shape[1]) != (out_features, in_features):
        raise CheckpointError(
            f"a GGUF weight of shape {list(t.shape)} where [{out_features}, {in_features}] "
            "is needed"
        )
    if t.qtype != "F32" and ops.supported(t.qtype, in_features):
        w = _blocks(t, views)
        return ops.GGMLLinear(w, t.qtype, out_features, in_features, bias, scale), t.qtype
    # F32 (a float view), or a format the kernels do not run (dequantized).
    weight = _float_view(t) if t.qtype == "F32" else t.dequantize()
    if scale != 1.0:
        weight = weight * scale
        bias = None if bias is None else bias * scale
    lin = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=False)
    return lin, "F32" if t.qtype == "F32" else f"{t.qtype}->F32"


def _native_embedding(
    t: GGUFTensor, dim: int, scale: float, views: dict[int, torch.Tensor]
) -> tuple[nn.Module, str]:
    from kernels.ggml import ops

    if t.qtype != "F32" and ops.supported(t.qtype, dim):
        w = _blocks(t, views)
        return ops.GGMLEmbedding(w, t.qtype, dim, scale=scale), t.qtype
    weight = _float_view(t) if t.qtype == "F32" else t.dequantize()
    emb = nn.Embedding(t.shape[0], dim, device="meta")
    emb.weight = nn.Parameter(weight * scale if scale != 1.0 else weight, requires_grad=False)
    return emb, "F32" if t.qtype == "F32" else f"{t.qtype}->F32"


def load_native(
    ckpt: Checkpoint,
    max_seq_length: int | None = None,
    full_logits: bool = False,
) -> tuple[Model, dict[str, int]]:
    """A GGUF's model with every tensor in its own format, in place; and how
    many weights run in each format. A pipeline stage's checkpoint builds
    that stage alone (build_model's `layers`)."""
    layers = ckpt.layers
    if ckpt.format != "gguf":
        raise CheckpointError(f"{ckpt.path} is not a GGUF file; its weights are float")
    config = dataclasses.replace(
        ckpt.config,
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        attention_multiplier=None,
        logits_scaling=1.0,
    )
    model = build_model(
        config, torch.float32, max_seq_length, "cpu", full_logits, meta_weights=True, layers=layers
    )
    scales = _output_scales(ckpt)
    tensors = ckpt.gguf
    counts: dict[str, int] = {}
    used: set[str] = set()
    views: dict[int, torch.Tensor] = {}

    def take(name: str) -> GGUFTensor:
        name = checkpoint_name(name, layers)
        if name not in tensors:
            raise CheckpointError(f"{ckpt.path}: GGUF has no tensor for {name}")
        used.add(name)
        return tensors[name]

    def count(how: str) -> None:
        counts[how] = counts.get(how, 0) + 1

    t = model.transformer
    for parent_name, parent in list(t.named_modules()):
        prefix = f"{parent_name}." if parent_name else ""
        for child_name, child in list(parent.named_children()):
            full = prefix + child_name
            if isinstance(child, nn.Linear):
                bias = None
                if child.bias is not None:
                    bias = take(f"{full}.bias").dequantize()
                w = take(f"{full}.weight")
                scale = scales.get(checkpoint_name(f"{full}.weight", layers), 1.0)
                mod, how = _native_linear(
                    w, child.out_features, child.in_features, bias, scale, views
                )
                setattr(parent, child_name, mod)
                count(how)
            elif isinstance(child, nn.Embedding):
                w = take(f"{full}.weight")
                scale = scales.get(checkpoint_name(f"{full}.weight", layers), 1.0)
                mod, how = _native_embedding(w, child.embedding_dim, scale, views)
                setattr(parent, child_name, mod)
                count(f"embedding {how}")
    # What is left on the meta device is float: norms (and their like).
    for name, p in list(t.named_parameters()):
        if not p.is_meta:
            continue
        value = take(name).dequantize()
        if tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(
                f"{ckpt.path}: {name} has shape {list(value.shape)}, the model {list(p.shape)}"
            )
        mod_name, _, attr = name.rpartition(".")
        setattr(t.get_submodule(mod_name), attr, nn.Parameter(value, requires_grad=False))
    # A stage checks its own layers' tensors (the checkpoint may hold more).
    unused = sorted(
        n
        for n in set(tensors) - used - {"output.weight"}
        if layers is None or (in_stage(n, ckpt.config, layers) and n.startswith("layers."))
    )
    if unused:
        raise CheckpointError(
            f"{ckpt.path}: GGUF tensors with no place in the model: {', '.join(unused[:5])}"
        )
    left = [n for n, x in list(model.named_parameters()) + list(model.named_buffers()) if x.is_meta]
    if left:
        raise CheckpointError(f"{ckpt.path}: no weights for {', '.join(left[:5])}")
    if ckpt.rope_freq_factors is not None:
        model.set_rope_freq_factors(ckpt.rope_freq_factors)
    return model, counts
