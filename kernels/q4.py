"""torchchat::q4_linear: exact 4-bit (GGUF Q4_0 / Q4_1) weight-only linear.

Weights stay exactly what the GGUF file holds (w = d*q + m per block of 32,
d and m fp16); activations stay float. See kernels/q4_linear.h for the
packed layout: qs uint8 [N, nb*16] (GGUF nibble order) and scales float16
[N, 2*nb] (nb scales d, then nb mins m, per row).

    from kernels import q4
    lin = q4.Q4Linear.from_gguf_blocks("Q4_1", blocks, (N, K))   # drop-in nn.Linear
    q4.quantize_model_q4(model, checkpoint.gguf_quantized)       # in place

Loading this module loads the op library and registers fake (meta)
implementations, so torch.export and AOTInductor can trace the op.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import gguf

LIB_NAME = "libtorchchat_q4_ops.so"
BLOCK = 32
_QTYPES = {"Q4_0": 2, "Q4_1": 3}  # GGML type ids


class Q4Error(ValueError):
    pass


def library_path() -> Path:
    """The op library: $TORCHCHAT_Q4_OPS_LIB, or the file next to this module."""
    env = os.environ.get("TORCHCHAT_Q4_OPS_LIB")
    # Not resolve(): under Bazel this file is a symlink into the source tree,
    # while the library sits next to the link in the runfiles.
    return Path(env) if env else Path(os.path.abspath(__file__)).with_name(LIB_NAME)


def load_library() -> None:
    if hasattr(torch.ops.torchchat, "q4_linear"):
        return
    path = library_path()
    if not path.is_file():
        raise Q4Error(f"torchchat q4 op library not found: {path} (build //kernels:{LIB_NAME})")
    # RTLD_GLOBAL first: an AOTInductor model built with aoti_c_shim_configs()
    # resolves aoti_torch_cpu_q4_linear from the global scope when loaded.
    ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
    torch.ops.load_library(str(path))


load_library()


def _isa_lib():
    lib = ctypes.CDLL(str(library_path()), mode=os.RTLD_GLOBAL)
    lib.torchchat_q4_isa.restype = ctypes.c_char_p
    lib.torchchat_q4_force_isa.argtypes = [ctypes.c_char_p]
    return lib


def isa() -> str:
    """The kernel path in use: "avx512vnni" (decode rounds x to int16 per
    block of 32), or the exact "avx512", "avx2", "neon" (aarch64), "scalar"."""
    return _isa_lib().torchchat_q4_isa().decode()


def rounds_activations() -> bool:
    return isa() == "avx512vnni"


def exact_isa() -> str:
    """The best path on this CPU that keeps x in fp32."""
    lib, before = _isa_lib(), isa()
    for name in ("avx512", "avx2", "neon", "scalar"):
        if lib.torchchat_q4_force_isa(name.encode()):
            lib.torchchat_q4_force_isa(before.encode())
            return name
    raise Q4Error("no exact q4 kernel path")  # scalar always runs: unreachable


@contextlib.contextmanager
def using_isa(name: str) -> Iterator[None]:
    """Runs the block with kernel path `name` ("" = the default)."""
    lib, before = _isa_lib(), isa()
    if not lib.torchchat_q4_force_isa(name.encode()):
        raise Q4Error(f"this CPU cannot run the {name!r} q4 kernels")
    try:
        yield
    finally:
        lib.torchchat_q4_force_isa(before.encode())


@torch.library.register_fake("torchchat::q4_linear")
def _q4_linear_fake(
    x: torch.Tensor,
    qs: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    k: int,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


# The C shim in torch_ops.cc; the name is what Inductor derives for the op.
C_SHIM_DECL = (
    "AOTITorchError aoti_torch_cpu_q4_linear(AtenTensorHandle x, AtenTensorHandle qs, "
    "AtenTensorHandle scales, AtenTensorHandle* bias, int64_t n, int64_t k, AtenTensorHandle* ret0)"
)


def aoti_c_shim_configs() -> dict:
    """inductor_configs for aoti_compile_and_package: call the op through its C
    shim instead of the proxy executor (no per-call boxing). The package then
    needs the symbol aoti_torch_cpu_q4_linear in the global scope when it is
    loaded: this module provides it in Python; a C++ runner links :torch_ops
    with -Wl,--export-dynamic-symbol=aoti_torch_cpu_q4_linear (see
    //kernels:aoti_q4_run)."""
    return {
        "aot_inductor.custom_ops_to_c_shims": {
            torch.ops.torchchat.q4_linear.default: [C_SHIM_DECL],
            torch.ops.torchchat.q8_linear.default: [C_SHIM_DECL.replace("q4_linear", "q8_linear")],
        }
    }


@torch.library.register_fake("torchchat::q8_linear")
def _q8_linear_fake(
    x: torch.Tensor,
    qs: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    k: int,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


def num_blocks(k: int) -> int:
    return (k + BLOCK - 1) // BLOCK


def _qtype_name(qtype: str | int) -> str:
    if isinstance(qtype, str):
        name = qtype
    else:  # gguf.GGMLQuantizationType or int
        name = getattr(qtype, "name", None) or {v: k for k, v in _QTYPES.items()}.get(
            int(qtype), str(qtype)
        )
    if name not in _QTYPES:
        raise Q4Error(f"q4: unsupported tensor type {name} (need Q4_0 or Q4_1)")
    return name


def pack_gguf_blocks(
    qtype: str | int, blocks: np.ndarray, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qs, scales) from the raw bytes of a GGUF Q4_0/Q4_1 tensor of logical shape (N, K)."""
    name = _qtype_name(qtype)
    n, k = (int(s) for s in shape)
    if n <= 0 or k <= 0 or k % BLOCK:
        raise Q4Error(f"q4: GGUF tensor shape {shape} must be (N, K) with K a multiple of {BLOCK}")
    head = 4 if name == "Q4_1" else 2
    raw = np.asarray(blocks, dtype=np.uint8)
    if raw.size != n * (k // BLOCK) * (head + 16):
        raise Q4Error(
            f"q4: {name} tensor of shape {shape} needs {n * (k // BLOCK) * (head + 16)} bytes, got {raw.size}"
        )
    b = raw.reshape(n, k // BLOCK, head + 16)
    d = b[..., 0:2].copy().view(np.float16)[..., 0]
    if name == "Q4_1":
        m = b[..., 2:4].copy().view(np.float16)[..., 0]
    else:
        # Q4_0 stores d*(q - 8): the min is -8d, exact in fp16 unless it overflows.
        with np.errstate(over="ignore"):
            m = (-8 * d.astype(np.float32)).astype(np.float16)
        bad = ~np.isfinite(m) & np.isfinite(d)
        if bad.any():
            raise Q4Error("q4: Q4_0 scale too large (|8d| overflows fp16)")
    qs = np.ascontiguousarray(b[..., head:]).reshape(n, -1)
    scales = np.concatenate([d, m], axis=1)
    return torch.from_numpy(qs.copy()), torch.from_numpy(np.ascontiguousarray(scales))


def pack_reader_tensor(t: gguf.ReaderTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qs, scales) from a gguf.ReaderTensor of type Q4_0 or Q4_1."""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    if len(shape) != 2:
        raise Q4Error(f"q4: tensor {t.name} has shape {shape}, need 2-D")
    return pack_gguf_blocks(t.tensor_type, np.asarray(t.data), shape)


def pack_dqm(
    d: torch.Tensor, m: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qs, scales) from per-block scales d [N, nb], mins m [N, nb] and codes q [N, K] in 0..15.

    d and m must be exactly representable in fp16 (as GGUF's are): the kernel
    keeps them in fp16, and a rounded scale would change the weights.
    """
    q = torch.as_tensor(q)
    if q.dim() != 2:
        raise Q4Error(f"q4: codes must be [N, K], got {tuple(q.shape)}")
    n, k = q.shape
    nb = num_blocks(k)
    d = torch.as_tensor(d, dtype=torch.float32).reshape(n, nb)
    m = torch.as_tensor(m, dtype=torch.float32).reshape(n, nb)
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise Q4Error("q4: codes must be in 0..15")
    dh, mh = d.to(torch.float16), m.to(torch.float16)
    if not (torch.equal(dh.float(), d) and torch.equal(mh.float(), m)):
        raise Q4Error("q4: scales and mins must be exactly representable in float16")
    qp = torch.zeros(n, nb * BLOCK, dtype=torch.uint8)
    qp[:, :k] = q.to(torch.uint8)
    qp = qp.reshape(n, nb, 2, 16)
    qs = (qp[:, :, 0] | (qp[:, :, 1] << 4)).reshape(n, nb * 16).contiguous()
    return qs, torch.cat([dh, mh], dim=1).contiguous()


def quantize_q4_1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qs, scales) of float weights [N, K] as GGUF Q4_1 blocks of 32: per block
    d = (max - min) / 15 and m = min, both rounded to fp16 first, so the codes
    are fitted to the values the kernel will use (llama.cpp rounds its codes
    against the unrounded d). K need not be a multiple of 32: the padding
    codes are never read."""
    w = torch.as_tensor(w).detach().float()
    if w.dim() != 2 or w.numel() == 0:
        raise Q4Error(f"q4: weights must be a non-empty [N, K] tensor, got {tuple(w.shape)}")
    n, k = w.shape
    nb = num_blocks(k)
    padded = torch.zeros(n, nb * BLOCK)
    padded[:, :k] = w
    g = padded.reshape(n, nb, BLOCK)
    # The padding must not widen the last block's range.
    valid = (torch.arange(nb * BLOCK) < k).reshape(nb, BLOCK)
    lo = torch.where(valid, g, torch.inf).amin(-1)
    hi = torch.where(valid, g, -torch.inf).amax(-1)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise Q4Error("q4: weights must be finite")
    m = lo.to(torch.float16)
    d = ((hi - m.float()) / 15).to(torch.float16)
    if not (torch.isfinite(m).all() and torch.isfinite(d).all()):
        raise Q4Error("q4: weights too large for fp16 block scales")
    df = d.float()[..., None]
    q = torch.where(df > 0, torch.round((g - m.float()[..., None]) / df.clamp(min=1e-30)), 0)
    q = q.clamp(0, 15).reshape(n, nb * BLOCK)[:, :k]
    return pack_dqm(d.float(), m.float(), q.to(torch.int32))


def dequantize(qs: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 [N, K] weights, d*q + m per block (the kernel's exact values)."""
    n = qs.shape[0]
    nb = num_blocks(k)
    b = qs.reshape(n, nb, 16)
    q = torch.cat([b & 0xF, b >> 4], dim=-1).float()
    d = scales[:, :nb].float()[..., None]
    m = scales[:, nb:].float()[..., None]
    return (d * q + m).reshape(n, nb * BLOCK)[:, :k].contiguous()


class Q4Linear(nn.Module):
    """Drop-in for nn.Linear with exact GGUF 4-bit weights (CPU)."""

    # Buffers, typed for the checker (nn.Module's __getattr__ is not).
    qs: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        qs: torch.Tensor,
        scales: torch.Tensor,
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        nb = num_blocks(in_features)
        if tuple(qs.shape) != (out_features, nb * 16) or qs.dtype != torch.uint8:
            raise Q4Error(
                f"q4: qs must be uint8 [{out_features}, {nb * 16}], got {qs.dtype} {tuple(qs.shape)}"
            )
        if tuple(scales.shape) != (out_features, 2 * nb) or scales.dtype != torch.float16:
            raise Q4Error(
                f"q4: scales must be float16 [{out_features}, {2 * nb}], got {scales.dtype} {tuple(scales.shape)}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qs", qs.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_gguf_blocks(
        cls,
        qtype: str | int,
        blocks: np.ndarray,
        shape: tuple[int, int],
        bias: torch.Tensor | None = None,
    ) -> Q4Linear:
        qs, scales = pack_gguf_blocks(qtype, blocks, shape)
        return cls(qs, scales, int(shape[1]), int(shape[0]), bias)

    @classmethod
    def from_reader_tensor(cls, t: gguf.ReaderTensor, bias: torch.Tensor | None = None) -> Q4Linear:
        qs, scales = pack_reader_tensor(t)
        return cls(qs, scales, int(t.shape[0]), int(t.shape[1]), bias)

    @classmethod
    def from_dqm(
        cls, d: torch.Tensor, m: torch.Tensor, q: torch.Tensor, bias: torch.Tensor | None = None
    ) -> Q4Linear:
        qs, scales = pack_dqm(d, m, q)
        return cls(qs, scales, int(q.shape[1]), int(q.shape[0]), bias)

    @classmethod
    def from_float(cls, w: torch.Tensor, bias: torch.Tensor | None = None) -> Q4Linear:
        """Float weights [N, K] quantized as GGUF Q4_1 (see quantize_q4_1)."""
        qs, scales = quantize_q4_1(w)
        return cls(qs, scales, int(w.shape[1]), int(w.shape[0]), bias)

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.qs, self.scales, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The OpOverload, not the packet: skips overload resolution (~1.5 us a call).
        return torch.ops.torchchat.q4_linear.default(
            x, self.qs, self.scales, self.bias, self.out_features, self.in_features
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class GGUFBlocks(Protocol):
    """A GGUF tensor as its file holds it (torchchat.checkpoint's GGUFTensor)."""

    @property
    def qtype(self) -> str: ...
    @property
    def blocks(self) -> np.ndarray: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def _default_weight_name(module_path: str) -> str:
    # torchchat's model nests the Meta-named modules under "transformer.".
    return module_path.removeprefix("transformer.") + ".weight"


def quantize_model_q4(
    model: nn.Module,
    gguf_quantized: Mapping[str, GGUFBlocks],
    weight_name: Callable[[str], str] = _default_weight_name,
) -> int:
    """Replaces, in place, each nn.Linear whose weight is a GGUF Q4_0/Q4_1 tensor.

    gguf_quantized maps weight names to objects with .qtype ("Q4_0"/"Q4_1"),
    .blocks (raw bytes) and .shape (N, K), like torchchat.checkpoint's
    GGUFQuantized. Returns how many modules were replaced.
    """
    count = 0
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            full = f"{name}.{child_name}" if name else child_name
            gq = gguf_quantized.get(weight_name(full))
            if gq is None or getattr(gq, "qtype", None) not in _QTYPES:
                continue
            shape = (child.out_features, child.in_features)
            if tuple(int(s) for s in gq.shape) != shape:
                raise Q4Error(f"q4: {full}: GGUF shape {tuple(gq.shape)} != linear {shape}")
            bias = None if child.bias is None else child.bias.data
            setattr(mod, child_name, Q4Linear.from_gguf_blocks(gq.qtype, gq.blocks, shape, bias))
            count += 1
    return count


# --- Q8_0 (the output layer / tied embedding of most GGUF files) -------------


def pack_q8_0_blocks(
    blocks: np.ndarray, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qs int8 [N, K], scales float16 [N, K/32]) from a GGUF Q8_0 tensor's raw bytes."""
    n, k = (int(s) for s in shape)
    if n <= 0 or k <= 0 or k % BLOCK:
        raise Q4Error(f"q8: GGUF tensor shape {shape} must be (N, K) with K a multiple of {BLOCK}")
    raw = np.asarray(blocks, dtype=np.uint8)
    if raw.size != n * (k // BLOCK) * 34:
        raise Q4Error(
            f"q8: Q8_0 tensor of shape {shape} needs {n * (k // BLOCK) * 34} bytes, got {raw.size}"
        )
    b = raw.reshape(n, k // BLOCK, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0]
    qs = b[..., 2:].copy().view(np.int8).reshape(n, k)
    return torch.from_numpy(qs), torch.from_numpy(np.ascontiguousarray(d))


class Q8Linear(nn.Module):
    """Drop-in for nn.Linear with exact GGUF Q8_0 weights (w = d*q), e.g. the output layer."""

    qs: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, qs: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        n, k = qs.shape
        if (
            qs.dtype != torch.int8
            or k % BLOCK
            or tuple(scales.shape) != (n, k // BLOCK)
            or scales.dtype != torch.float16
        ):
            raise Q4Error(
                f"q8: need qs int8 [N, K], K % 32 == 0, scales float16 [N, K/32]; got "
                f"{qs.dtype} {tuple(qs.shape)}, {scales.dtype} {tuple(scales.shape)}"
            )
        self.in_features, self.out_features = k, n
        self.register_buffer("qs", qs.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_gguf_blocks(
        cls, blocks: np.ndarray, shape: tuple[int, int], bias: torch.Tensor | None = None
    ) -> Q8Linear:
        return cls(*pack_q8_0_blocks(blocks, shape), bias)

    @classmethod
    def from_reader_tensor(cls, t: gguf.ReaderTensor, bias: torch.Tensor | None = None) -> Q8Linear:
        import gguf

        if t.tensor_type != gguf.GGMLQuantizationType.Q8_0:
            raise Q4Error(f"q8: tensor {t.name} is {t.tensor_type.name}, need Q8_0")
        cols, rows = (int(x) for x in t.shape.tolist())
        return cls.from_gguf_blocks(np.asarray(t.data), (rows, cols), bias)

    def dequantized(self) -> torch.Tensor:
        d = self.scales.float().repeat_interleave(BLOCK, dim=1)
        return d * self.qs.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.q8_linear.default(
            x, self.qs, self.scales, self.bias, self.out_features, self.in_features
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
