"""GGUF tensors used in place: torchchat::ggml_linear and ggml_embedding.

A weight is the tensor's bytes exactly as the GGUF file holds them, uint8
[rows, row_bytes] (usually a view of the mmapped file, so loading copies
nothing), with its ggml type; kernels/ggml/linear.h has the formats and the
two compute paths.

    lin = GGMLLinear(weight, "Q4_K", out_features, in_features)   # drop-in nn.Linear
    emb = GGMLEmbedding(weight, "Q6_K", dim)                        # drop-in nn.Embedding

Importing this module loads the op library and registers the ops' fake
(meta) kernels, so torch.export and AOTInductor can trace them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import torch
from torch import nn

from kernels import q4  # loads libtorchchat_q4_ops.so, which holds these ops too

# ggml's type ids for the formats the kernels run (linear.h).
TYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
    "IQ4_NL": 20,
    "IQ4_XS": 23,
    "BF16": 30,
}
# (elements, bytes) per block.
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
}


class GGMLError(ValueError):
    pass


def supported(qtype: str, k: int) -> bool:
    """Whether the kernels run a [*, k] tensor of this type."""
    if qtype not in BLOCKS:
        return False
    elems = BLOCKS[qtype][0]
    return k > 0 and k % 32 == 0 and k % elems == 0


def row_bytes(qtype: str, k: int) -> int:
    if not supported(qtype, k):
        raise GGMLError(f"ggml: a {qtype} row of {k} elements is not supported")
    elems, nbytes = BLOCKS[qtype]
    return k // elems * nbytes


@torch.library.register_fake("torchchat::ggml_linear")
def _linear_fake(
    x: torch.Tensor, w: torch.Tensor, type: int, n: int, k: int, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("torchchat::ggml_embedding")
def _embedding_fake(ids: torch.Tensor, w: torch.Tensor, type: int, k: int) -> torch.Tensor:
    return ids.new_empty((*ids.shape, k), dtype=torch.float32)


# The C shims in ggml/torch_ops.cc; Inductor derives the names from the ops.
C_SHIM_DECLS = {
    torch.ops.torchchat.ggml_linear.default: [
        "AOTITorchError aoti_torch_cpu_ggml_linear(AtenTensorHandle x, AtenTensorHandle w, "
        "int64_t type, int64_t n, int64_t k, AtenTensorHandle* bias, AtenTensorHandle* ret0)"
    ],
    torch.ops.torchchat.ggml_embedding.default: [
        "AOTITorchError aoti_torch_cpu_ggml_embedding(AtenTensorHandle ids, AtenTensorHandle w, "
        "int64_t type, int64_t k, AtenTensorHandle* ret0)"
    ],
}


def _check_weight(weight: torch.Tensor, qtype: str, rows: int, k: int) -> None:
    want = (rows, row_bytes(qtype, k))
    if weight.dtype != torch.uint8 or tuple(weight.shape) != want:
        raise GGMLError(
            f"ggml: a {qtype} weight of {rows}x{k} must be uint8 {list(want)}, got "
            f"{weight.dtype} {list(weight.shape)}"
        )


class GGMLLinear(nn.Module):
    """Drop-in for nn.Linear with a GGUF tensor's own bytes as its weight.

    `scale` multiplies the output (Granite's multipliers, folded here
    because a block's own scales cannot take them exactly)."""

    # Buffers, typed for the checker (nn.Module's __getattr__ is not).
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        qtype: str,
        out_features: int,
        in_features: int,
        bias: torch.Tensor | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        _check_weight(weight, qtype, out_features, in_features)
        self.qtype, self.ggml_type = qtype, TYPES[qtype]
        self.in_features, self.out_features = in_features, out_features
        self.scale = float(scale)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.torchchat.ggml_linear.default(
            x, self.weight, self.ggml_type, self.out_features, self.in_features, self.bias
        )
        return y * self.scale if self.scale != 1.0 else y

    def dequantized(self) -> torch.Tensor:
        rows = torch.arange(self.out_features)
        return torch.ops.torchchat.ggml_embedding.default(
            rows, self.weight, self.ggml_type, self.in_features
        )

    def extra_repr(self) -> str:
        return (
            f"{self.qtype}, in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class GGMLEmbedding(nn.Module):
    """Drop-in for nn.Embedding over a GGUF tensor: the looked-up rows are
    dequantized, in `dtype`, times `scale`."""

    weight: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        qtype: str,
        embedding_dim: int,
        dtype: torch.dtype = torch.float32,
        scale: float = 1.0,
    ):
        super().__init__()
        _check_weight(weight, qtype, weight.shape[0], embedding_dim)
        self.qtype, self.ggml_type = qtype, TYPES[qtype]
        self.num_embeddings, self.embedding_dim = int(weight.shape[0]), embedding_dim
        self.out_dtype, self.scale = dtype, float(scale)
        self.register_buffer("weight", weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.ops.torchchat.ggml_embedding.default(
            ids, self.weight, self.ggml_type, self.embedding_dim
        )
        if self.scale != 1.0:
            out = out * self.scale
        return out.to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.qtype}, {self.num_embeddings}, {self.embedding_dim}"


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(q4.library_path()), mode=os.RTLD_GLOBAL)
    lib.torchchat_ggml_isa.restype = ctypes.c_char_p
    lib.torchchat_ggml_force_isa.argtypes = [ctypes.c_char_p]
    lib.torchchat_ggml_decode_x.restype = ctypes.c_char_p
    lib.torchchat_ggml_force_decode_x.argtypes = [ctypes.c_char_p]
    return lib


def isa() -> str:
    """The kernel path in use: "avx512vnni", "avx2" or "scalar"."""
    return _lib().torchchat_ggml_isa().decode()


@contextlib.contextmanager
def using_isa(name: str) -> Iterator[None]:
    """Runs the block with kernel path `name` ("" = the default)."""
    lib, before = _lib(), isa()
    if not lib.torchchat_ggml_force_isa(name.encode()):
        raise GGMLError(f"this CPU cannot run the {name!r} ggml kernels")
    try:
        yield
    finally:
        lib.torchchat_ggml_force_isa(before.encode())


def decode_x() -> str:
    """Decode's activation precision: "int8" (the default) or "int16"."""
    return _lib().torchchat_ggml_decode_x().decode()


def set_decode_x(name: str) -> None:
    """Decode's x rounded to `name` ("int8", "int16"; "" = the default) from now on."""
    if not _lib().torchchat_ggml_force_decode_x(name.encode()):
        raise GGMLError(f"unknown decode activation precision {name!r} (int8 or int16)")


@contextlib.contextmanager
def using_decode_x(name: str) -> Iterator[None]:
    """Runs the block with decode's x rounded to `name` ("" = the default)."""
    lib, before = _lib(), decode_x()
    if not lib.torchchat_ggml_force_decode_x(name.encode()):
        raise GGMLError(f"unknown decode activation precision {name!r} (int8 or int16)")
    try:
        yield
    finally:
        lib.torchchat_ggml_force_decode_x(before.encode())
