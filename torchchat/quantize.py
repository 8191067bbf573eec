"""Weight-only quantization for eager generation (`--quantize` JSON).

Upstream torchchat's syntax: {"linear:int4": {"groupsize": 32}},
{"linear:int8": {"groupsize": 0}}, {"embedding": {"bitwidth": 8,
"groupsize": 0}}, several keys at once. "precision" and "executor" are
accepted for compatibility ({"precision": {"dtype": "bf16"}} sets the dtype).

linear:int4 with groups of 32 runs //kernels:q4 (torchchat::q4_linear): a
GGUF Q4_0/Q4_1 tensor keeps its own blocks, and float weights become Q4_1
blocks (per-group min and range, fp16 d and m), so eager, a .pt2 and a .pte
share one kernel. Without that library, or with wider groups, torch's
int4pack runs instead: Q4_1's d and m stored as its scales_and_zeros
[d, m + 8d] (its kernel computes (q - 8) * s + z), other weights quantized
asymmetrically per group the same way.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torchchat.checkpoint import GGUFQuantized
    from torchchat.model import Model


class QuantizeError(ValueError):
    pass


# A linear:int4 option only gguf_native_spec sets (--quantize cannot):
# Q8_0 linears keep their 8-bit blocks. An explicit linear:int4 makes them
# 4-bit, as asked.
GGUF_NATIVE = "gguf_native"

_KNOWN = {
    "linear:int4": {"groupsize"},
    "linear:int8": {"groupsize"},
    "embedding": {"bitwidth", "groupsize"},
    "precision": {"dtype"},
    "executor": {"accelerator"},
}


def read_spec(
    value: str | dict[str, Any] | None,
    schemes: dict[str, set],
    presets: dict[str, dict] | None = None,
) -> dict[str, dict[str, Any]]:
    """Reads upstream torchchat's --quantize syntax, for eager and export alike.

    `value` is JSON text, a .json file, a preset name or a dict; `schemes`
    maps each scheme this caller supports to its option names. Checks only
    the syntax; callers check what their backend can do.
    """
    if value is None or value == "":
        return {}
    presets = presets or {}
    spec: Any = value
    if isinstance(value, str):
        text = value.strip()
        if text in presets:
            spec = json.loads(json.dumps(presets[text]))
        elif text.startswith(("{", "[")):
            spec = _loads(text, "--quantize")
        elif os.path.isfile(text):
            with open(text) as f:
                spec = _loads(f.read(), text)
        else:
            kinds = f"a preset ({', '.join(presets)}) " if presets else ""
            raise QuantizeError(
                f"--quantize: {value!r} is not JSON, {kinds}or a readable .json file"
            )
    if not isinstance(spec, dict):
        raise QuantizeError("--quantize: expected a JSON object")
    for key, opts in spec.items():
        if key not in schemes:
            raise QuantizeError(f"--quantize: unknown scheme {key!r} (known: {', '.join(schemes)})")
        if not isinstance(opts, dict):
            raise QuantizeError(f"--quantize: the options of {key!r} must be a JSON object")
        extra = set(opts) - schemes[key]
        if extra:
            raise QuantizeError(
                f"--quantize: unknown option(s) {sorted(extra)} for {key!r} "
                f"(known: {sorted(schemes[key])})"
            )
    return spec


def _loads(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise QuantizeError(f"{where}: invalid JSON: {e}") from None


def parse(spec: str | dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validates a --quantize value (JSON text, a .json file or a dict)."""
    spec = read_spec(spec, _KNOWN)
    if not spec:
        return {}
    if "linear:int4" in spec and "linear:int8" in spec:
        raise QuantizeError("--quantize: choose one of linear:int4 and linear:int8")
    g = spec.get("linear:int4", {}).get("groupsize", 32)
    if "linear:int4" in spec and g not in (32, 64, 128, 256):
        raise QuantizeError("--quantize: linear:int4 groupsize must be 32, 64, 128 or 256")
    emb = spec.get("embedding")
    if emb is not None and emb.get("bitwidth", 8) != 8:
        raise QuantizeError("--quantize: only embedding bitwidth 8 is supported")
    return spec


# --- int4 -------------------------------------------------------------------


class Int4Linear(nn.Module):
    """int4 weight-only linear: 4-bit codes, per-group scale and zero.

    Weight = (q - 8) * scale + zero, per group of `groupsize` inputs.
    Computes in the activation dtype: bf16/fp16 use torch's fast CPU kernel;
    fp32 is exact (and slower).
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        groupsize: int,
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.groupsize = in_features, out_features, groupsize
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_codes(
        cls,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        groupsize: int,
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """q: int [N, K] in 0..15; scale, zero: float [N, K // groupsize]."""
        n, k = q.shape
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).contiguous(), 1
        )
        sz = torch.stack([scale.float(), zero.float()], dim=-1).transpose(0, 1).contiguous()
        return cls(packed, sz, groupsize, k, n, bias)

    def dequantized(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, self.groupsize, self.scales_and_zeros
        ).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.packed, self.groupsize, self.scales_and_zeros.to(x.dtype)
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int4(
    w: torch.Tensor, groupsize: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per-group int4: codes 0..15, scale (max-min)/15, zero min."""
    n, k = w.shape
    if k % groupsize:
        raise QuantizeError(f"in_features {k} is not a multiple of groupsize {groupsize}")
    g = w.float().reshape(n, k // groupsize, groupsize)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.clamp(torch.round((g - lo[..., None]) / scale[..., None]), 0, 15)
    # Codes are stored as (q - 8) * scale + zero, so zero = min + 8 * scale.
    return q.reshape(n, k).to(torch.int32), scale, lo + 8 * scale


def gguf_q4_codes(
    qtype: str, blocks: np.ndarray, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact codes, scales and zeros of GGUF Q4_0 / Q4_1 blocks.

    Q4_1 block: fp16 d, fp16 m, 16 bytes; Q4_0: fp16 d, 16 bytes. Low nibbles
    are elements 0..15 of the block, high nibbles 16..31. Value = d*q + m
    (Q4_1) or d*(q - 8) (Q4_0).
    """
    n, k = shape
    head = 4 if qtype == "Q4_1" else 2
    b = np.asarray(blocks, dtype=np.uint8).reshape(n, k // 32, head + 16)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., head:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, k).astype(np.int32)
    if qtype == "Q4_1":
        m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = m + 8 * d
    else:
        zero = np.zeros_like(d)
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(zero)


# --- int8 -------------------------------------------------------------------


class Int8Linear(nn.Module):
    """int8 weight-only linear, symmetric per output channel."""

    def __init__(
        self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
    ):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = weight_int8.shape

    @classmethod
    def from_float(cls, w: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        w = w.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.clamp(torch.round(w / scales[:, None]), -128, 127).to(torch.int8)
        return cls(q, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(
            x.reshape(-1, shape[-1]), self.weight_int8, self.scales.to(x.dtype)
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """int8 embedding table with a scale per row (groupsize 0) or group."""

    # Buffers, typed for the checker (nn.Module's __getattr__ is not).
    weight_int8: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, groupsize: int = 0, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        v, d = weight.shape
        g = d if groupsize in (0, None) else groupsize
        if d % g:
            raise QuantizeError(f"embedding dim {d} is not a multiple of groupsize {g}")
        w = weight.float().reshape(v, d // g, g)
        scales = (w.abs().amax(-1) / 127).clamp(min=1e-12)
        q = torch.clamp(torch.round(w / scales[..., None]), -128, 127).to(torch.int8)
        self._set(q.reshape(v, d), scales, g, dtype)

    @classmethod
    def from_codes(
        cls, q: torch.Tensor, scales: torch.Tensor, groupsize: int, dtype: torch.dtype
    ) -> Int8Embedding:
        """int8 codes [V, D] and a scale per group [V, D/groupsize], as they are."""
        emb = cls.__new__(cls)
        nn.Module.__init__(emb)
        emb._set(q, scales.float(), groupsize, dtype)
        return emb

    def _set(self, q: torch.Tensor, scales: torch.Tensor, g: int, dtype: torch.dtype) -> None:
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales)
        self.groupsize, self.dim, self.out_dtype = g, q.shape[1], dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q = F.embedding(ids, self.weight_int8).float()
        s = F.embedding(ids, self.scales)
        out = (q.reshape(*q.shape[:-1], -1, self.groupsize) * s[..., None]).reshape(q.shape)
        return out.to(self.out_dtype)


# --- applying ------------------------------------------------------------------


def _q4_kernel():
    """//kernels:q4 (exact GGUF Q4 linear for any activation dtype), if built.

    torch's int4pack below is exact only with fp32 activations, where its CPU
    kernel is slow; the dedicated kernel keeps fp32 and is fast.
    """
    if os.environ.get("TORCHCHAT_NO_Q4_KERNEL"):
        return None
    try:
        from kernels import q4
    except (ImportError, OSError, ValueError):
        return None
    return q4


def _linears(model: nn.Module):
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                full = f"{name}.{child_name}" if name else child_name
                yield mod, child_name, full, child


def _output_q8_0(
    parent: nn.Module, child_name: str, lin: nn.Linear, gguf_quantized: dict[str, GGUFQuantized]
) -> int:
    gq = gguf_quantized.get("output.weight")
    q4 = _q4_kernel()
    if gq is None or gq.qtype != "Q8_0" or q4 is None or lin.bias is not None:
        return 0
    if tuple(int(x) for x in gq.shape) != (lin.out_features, lin.in_features):
        return 0
    setattr(parent, child_name, q4.Q8Linear.from_gguf_blocks(gq.blocks, gq.shape))
    return 1


def gguf_native_spec(
    model: Model, gguf_quantized: dict[str, GGUFQuantized]
) -> dict[str, dict[str, Any]]:
    """The --quantize that runs a GGUF in its own precision, or {}.

    When every transformer-layer linear is Q4_0, Q4_1 or Q8_0 in the file,
    that is linear:int4 with groups of 32: the file's own codes run through
    the q4 op (Q8_0 ones through the q8 op), a Q8_0 unembedding through the
    q8 op and a Q8_0 embedding as int8 groups of 32, exactly as the file
    defines them. Anything else (F16, K-quant linears) is dequantized to
    the model's dtype, as before.
    """
    names = [full.removeprefix("transformer.") + ".weight" for _, _, full, _ in _linears(model)]
    layers = [n for n in names if n != "output.weight"]
    exact = all(
        n in gguf_quantized and gguf_quantized[n].qtype in ("Q4_0", "Q4_1", "Q8_0") for n in layers
    )
    if not layers or not exact:
        return {}
    spec: dict[str, dict[str, Any]] = {"linear:int4": {"groupsize": 32, GGUF_NATIVE: True}}
    emb = gguf_quantized.get("tok_embeddings.weight")
    if emb is not None and emb.qtype == "Q8_0":
        spec["embedding"] = {"groupsize": 32}
    return spec


def quantize_model(
    model: Model,
    spec: dict[str, dict[str, Any]],
    gguf_quantized: dict[str, GGUFQuantized] | None = None,
) -> dict[str, int]:
    """Replaces modules in place; returns counts per scheme for reporting.

    `gguf_quantized` (Meta name -> GGUFQuantized) lets int4 take a GGUF
    tensor's own codes instead of re-quantizing its dequantized values.
    """
    gguf_quantized = gguf_quantized or {}
    counts = {
        "int4_exact_from_gguf": 0,
        "q8_0_exact_from_gguf": 0,
        "int4": 0,
        "int8": 0,
        "embedding_int8": 0,
        "embedding_q8_0": 0,
        "output_q8_0": 0,
    }
    dtype = next(model.parameters()).dtype
    # A pipeline stage past the first has no embedding.
    if "embedding" in spec and model.transformer.tok_embeddings is not None:
        t = model.transformer
        g = spec["embedding"].get("groupsize", 0)
        gq = gguf_quantized.get("tok_embeddings.weight")
        q4 = _q4_kernel()
        if gq is not None and gq.qtype == "Q8_0" and g == 32 and q4 is not None:
            # GGUF's own Q8_0 blocks are int8 groups of 32 already: exact.
            qs, scales = q4.pack_q8_0_blocks(gq.blocks, gq.shape)
            t.tok_embeddings = Int8Embedding.from_codes(qs, scales, g, dtype)
            counts["embedding_q8_0"] += 1
        else:
            t.tok_embeddings = Int8Embedding(t.tok_embeddings.weight.data, g, dtype)
            counts["embedding_int8"] += 1
    for key in ("linear:int4", "linear:int8"):
        if key not in spec:
            continue
        for parent, child_name, full, lin in _linears(model):
            bias = None if lin.bias is None else lin.bias.data.clone()
            wname = full.removeprefix("transformer.") + ".weight"
            if key == "linear:int8":
                setattr(parent, child_name, Int8Linear.from_float(lin.weight.data, bias))
                counts["int8"] += 1
                continue
            if wname == "output.weight":
                # The unembedding keeps its precision (Q8_0 in GGUF, and often
                # tied to the embedding): 4-bit logits lose top-1 agreement and
                # per-channel int8 loses Q8_0's per-32 scales. GGUF's own Q8_0
                # blocks run exactly, at a quarter of fp32's bytes.
                counts["output_q8_0"] += _output_q8_0(parent, child_name, lin, gguf_quantized)
                continue
            g = spec[key].get("groupsize", 32)
            gq = gguf_quantized.get(wname)
            if gq is not None and gq.qtype == "Q8_0":
                q4 = _q4_kernel()
                if spec[key].get(GGUF_NATIVE) and q4 is not None:
                    q8 = q4.Q8Linear.from_gguf_blocks(gq.blocks, gq.shape, bias)
                    setattr(parent, child_name, q8)
                    counts["q8_0_exact_from_gguf"] += 1
                    continue
                gq = None  # to 4 bits from its values, like a float weight
            if gq is not None and g != 32:
                # Re-grouping 4-bit codes re-quantizes them: on the built-in
                # model g64 drops top-1 agreement with fp32 to ~0.64.
                raise QuantizeError(
                    f"--quantize: {wname} is already {gq.qtype} (4-bit, groups of 32); "
                    "use linear:int4 with groupsize 32 to keep it exact"
                )
            if gq is not None:
                counts["int4_exact_from_gguf"] += 1
                q4 = _q4_kernel()
                if q4 is not None:
                    setattr(
                        parent,
                        child_name,
                        q4.Q4Linear.from_gguf_blocks(gq.qtype, gq.blocks, gq.shape, bias),
                    )
                    continue
                q, s, z = gguf_q4_codes(gq.qtype, gq.blocks, gq.shape)
            elif g == 32 and _q4_kernel() is not None:
                # GGUF's Q4_1, so float checkpoints run the same kernel (and
                # export to a .pte, where torch's int4pack has no kernel).
                q4 = _q4_kernel()
                setattr(parent, child_name, q4.Q4Linear.from_float(lin.weight.data, bias))
                counts["int4"] += 1
                continue
            elif lin.in_features % g == 0:
                q, s, z = quantize_int4(lin.weight.data, g)
                counts["int4"] += 1
            else:
                continue  # e.g. a projection too narrow for the group: stays dense
            if lin.out_features % 16:
                continue  # torch's int4pack needs rows in multiples of 16: stays dense
            setattr(parent, child_name, Int4Linear.from_codes(q, s, z, g, bias))
    return counts
