"""`--quantize` for export: upstream torchchat's JSON and presets.

One spec, two targets. For a .pte every scheme maps onto ExecuTorch's own
source transforms (examples/models/llama/source_transformation), so the
lowered graph is what ExecuTorch's XNNPACK flow expects. For a .pt2 the
schemes map onto torchchat.quantize, which keeps GGUF Q4_0/Q4_1 codes exact.
A scheme a target cannot run is an error, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# One reader of the --quantize syntax for eager and export; the error type
# is shared too, so callers catch one class.
from torchchat.config import DTYPE_NAMES
from torchchat.quantize import QuantizeError, read_spec

# Scheme -> allowed options. Names follow upstream torchchat's quantize.py;
# linear:a8w8dq is ExecuTorch's 8da8w, which upstream never exposed.
SCHEMES: dict[str, set] = {
    "embedding": {"bitwidth", "groupsize"},
    "linear:int4": {"groupsize"},
    "linear:int8": {"groupsize"},
    "linear:a8w4dq": {"groupsize"},
    "linear:a8w8dq": {"groupsize"},
    "precision": {"dtype"},
    "executor": {"accelerator"},
    # A GGUF's tensors in the file's own formats (torchchat::ggml_linear and
    # ggml_embedding), as generate runs them.
    "gguf": set(),
}

# Upstream's presets use groupsize 256; 256 does not divide the 576-wide
# projections of the built-in SmolLM2, which ExecuTorch would then leave
# unquantized. 32 divides every Llama-family width and is GGUF's block size.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mobile": {
        "embedding": {"bitwidth": 4, "groupsize": 32},
        "linear:a8w4dq": {"groupsize": 32},
    },
    "desktop": {
        "linear:int4": {"groupsize": 32},
        "precision": {"dtype": "bf16"},
        "executor": {"accelerator": "fast"},
    },
    # GGUF's Q4 linears and Q8_0 embedding and unembedding kept exactly (float
    # checkpoints become Q4_1 and int8 groups of 32). In a .pte the linears
    # run torchchat's kernels: et_run has them, ExecuTorch's runners do not.
    "q4": {
        "embedding": {"bitwidth": 8, "groupsize": 32},
        "linear:int4": {"groupsize": 32},
    },
    # A GGUF as the file holds it: every tensor in its own format (Q4_K,
    # Q6_K, IQ4_XS, F16, ...), the .pt2's default for a GGUF. A .pte needs
    # torchchat's kernels (et_run has them).
    "gguf": {"gguf": {}},
}

_LINEAR = ("linear:int4", "linear:int8", "linear:a8w4dq", "linear:a8w8dq")


def parse(value: str | dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """A validated spec from JSON text, a .json file, a preset name or a dict."""
    spec = read_spec(value, SCHEMES, PRESETS)
    if not spec:
        return {}
    for key, opts in spec.items():
        g = opts.get("groupsize", 0)
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise QuantizeError(f"--quantize: {key} groupsize must be a non-negative integer")
    if "gguf" in spec and len(spec) > 1:
        raise QuantizeError("--quantize: gguf keeps a GGUF's own formats; it takes no other scheme")
    linears = [k for k in _LINEAR if k in spec]
    if len(linears) > 1:
        raise QuantizeError(f"--quantize: choose one linear scheme, not {', '.join(linears)}")
    if "precision" in spec:
        d = spec["precision"].get("dtype", "fp32")
        if d not in DTYPE_NAMES:
            raise QuantizeError(
                f"--quantize: unknown precision dtype {d!r} (known: {', '.join(DTYPE_NAMES)})"
            )
    return spec


def dtype_of(spec: dict[str, dict[str, Any]], default: str) -> str:
    """The compute dtype name (fp32/bf16/fp16); precision overrides --dtype."""
    if "precision" in spec:
        return DTYPE_NAMES[spec["precision"].get("dtype", "fp32")]
    return DTYPE_NAMES.get(default, default)


@dataclass
class EtQuant:
    """Arguments for ExecuTorch's export_llama_lib._get_source_transforms."""

    embedding_quantize: str | None = None  # "bits,groupsize"
    quantization_mode: str | None = None  # "8da4w", "8da8w"
    group_size: int | None = None
    # linear:int4: torchchat::q4_linear / q8_linear (//kernels:et_q4_ops),
    # GGUF's blocks kept exactly, instead of an ExecuTorch transform.
    q4_kernels: bool = False
    # gguf: the GGUF's own formats through torchchat::ggml_* (//kernels/ggml).
    gguf_kernels: bool = False

    def describe(self) -> str:
        if self.gguf_kernels:
            return "the GGUF's own formats (torchchat::ggml_linear)"
        parts = []
        if self.embedding_quantize:
            parts.append(f"embedding {self.embedding_quantize}")
        if self.quantization_mode:
            parts.append(f"linear {self.quantization_mode} g{self.group_size}")
        if self.q4_kernels:
            parts.append("linear int4 g32 (torchchat::q4_linear)")
        return ", ".join(parts) or "none"


def for_executorch(spec: dict[str, dict[str, Any]]) -> EtQuant:
    q = EtQuant()
    if "gguf" in spec:
        q.gguf_kernels = True
        return q
    if "embedding" in spec:
        bits = spec["embedding"].get("bitwidth", 8)
        if bits not in (2, 4, 8):
            raise QuantizeError("--quantize: embedding bitwidth must be 2, 4 or 8 for a .pte")
        q.embedding_quantize = f"{bits},{spec['embedding'].get('groupsize', 0)}"
    if "linear:a8w4dq" in spec or "linear:a8w8dq" in spec:
        key = "linear:a8w4dq" if "linear:a8w4dq" in spec else "linear:a8w8dq"
        q.quantization_mode = "8da4w" if key == "linear:a8w4dq" else "8da8w"
        q.group_size = spec[key].get("groupsize", 32 if key == "linear:a8w4dq" else 0)
    elif "linear:int8" in spec:
        # ExecuTorch 1.5.1's weight-only int8 transform exports, then its own
        # to_executorch() fails in ConvertToLinearPass on the dynamic token
        # dimension ("a and b must have same reduction dim"), minutes in.
        # Refuse it up front.
        raise QuantizeError(
            "--quantize: linear:int8 (weight-only) fails in ExecuTorch 1.5.1's own lowering "
            "with a dynamic token dimension; use linear:a8w8dq for 8-bit linears in a .pte"
        )
    elif "linear:int4" in spec:
        g = spec["linear:int4"].get("groupsize", 32)
        if g != 32:
            raise QuantizeError(
                f"--quantize: linear:int4 in a .pte runs torchchat::q4_linear on GGUF's 4-bit "
                f"blocks of 32; groupsize {g} is not supported (use 32)"
            )
        if dtype_of(spec, "fp32") != "fp32":
            raise QuantizeError(
                "--quantize: linear:int4 in a .pte computes in fp32; drop the bf16/fp16 "
                "precision (the 'q4' preset has none)"
            )
        q.q4_kernels = True
    return q


def for_aoti(spec: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The subset torchchat.quantize runs (it compiles into the .pt2 as aten ops)."""
    for key in ("linear:a8w4dq", "linear:a8w8dq"):
        if key in spec:
            raise QuantizeError(
                f"--quantize: {key} is an ExecuTorch (XNNPACK) scheme; for a .pt2 use "
                "linear:int4 or linear:int8 (or the 'desktop' preset)"
            )
    if "embedding" in spec and spec["embedding"].get("bitwidth", 8) != 8:
        raise QuantizeError("--quantize: a .pt2 supports embedding bitwidth 8 only")
    out = {k: dict(v) for k, v in spec.items() if k not in ("precision", "executor")}
    if "linear:int4" in out and out["linear:int4"].get("groupsize", 32) not in (32, 64, 128, 256):
        raise QuantizeError("--quantize: linear:int4 groupsize must be 32, 64, 128 or 256")
    return out
