"""A GGUF file's header, read without touching its weights.

gguf-py's GGUFReader parses every metadata array element into its own numpy
array, which for a Llama 3 vocabulary (128k tokens, 280k merges) takes
seconds on every start. Here arrays of numbers are single numpy views and
arrays of strings are skipped (their offsets kept, decoded only if asked):
reading an 8B file's header takes milliseconds, so a cached compiled model
starts in about a second. Tensors are GGUFTensors over one copy-on-write
mapping of the file (read in place; the C++ tokenizers read the
vocabulary themselves). gguf-py still owns the formats' constants and the
reference dequantization.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from torchchat.checkpoint.base import GGUFTensor

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF metadata value types (gguf.GGUFValueType).
_SCALARS = {
    0: ("<B", 1),  # uint8
    1: ("<b", 1),  # int8
    2: ("<H", 2),  # uint16
    3: ("<h", 2),  # int16
    4: ("<I", 4),  # uint32
    5: ("<i", 4),  # int32
    6: ("<f", 4),  # float32
    7: ("<?", 1),  # bool
    10: ("<Q", 8),  # uint64
    11: ("<q", 8),  # int64
    12: ("<d", 8),  # float64
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?"}
_NUMPY.update({10: "<u8", 11: "<i8", 12: "<f8"})
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a whole GGUF file."""


class StringArray:
    """An array of strings left in the file: its length, decoded on demand."""

    def __init__(self, buf: memoryview, offsets: list[int]):
        self._buf, self._offsets = buf, offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> str:
        off = self._offsets[i]
        (n,) = struct.unpack_from("<Q", self._buf, off)
        return bytes(self._buf[off + 8 : off + 8 + n]).decode("utf-8", errors="replace")


class GGUFFile:
    """`fields` (key -> value: int, float, bool, str, a numpy array of numbers
    or a StringArray) and `tensors` (name -> GGUFTensor, in file order)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        # Copy-on-write: torch takes writable arrays without a warning, and
        # nothing ever writes, so every page stays the page cache's.
        self.data = np.memmap(self.path, mode="c")
        self._buf = self.data.data  # a memoryview of the mapping
        self.fields: dict[str, Any] = {}
        self.tensors: dict[str, GGUFTensor] = {}
        try:
            self._read()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
            raise GGUFFormatError(f"{type(e).__name__}: {e}") from None

    # -- reading -------------------------------------------------------------------

    def _unpack(self, fmt: str, off: int) -> tuple[Any, int]:
        (v,) = struct.unpack_from(fmt, self._buf, off)
        return v, off + struct.calcsize(fmt)

    def _string(self, off: int) -> tuple[str, int]:
        n, off = self._unpack("<Q", off)
        if off + n > len(self._buf):
            raise ValueError("a string runs past the end of the file")
        return bytes(self._buf[off : off + n]).decode("utf-8"), off + n

    def _value(self, vtype: int, off: int) -> tuple[Any, int]:
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype][0], off)
        if vtype == _STRING:
            return self._string(off)
        if vtype == _ARRAY:
            itype, off = self._unpack("<I", off)
            count, off = self._unpack("<Q", off)
            if itype in _NUMPY:
                dtype = np.dtype(_NUMPY[itype])
                end = off + count * dtype.itemsize
                if end > len(self._buf):
                    raise ValueError("an array runs past the end of the file")
                return np.frombuffer(self._buf[off:end], dtype=dtype), end
            if itype == _STRING:
                offsets = []
                for _ in range(count):
                    offsets.append(off)
                    (n,) = struct.unpack_from("<Q", self._buf, off)
                    off += 8 + n
                if off > len(self._buf):
                    raise ValueError("a string array runs past the end of the file")
                return StringArray(self._buf, offsets), off
            # Arrays of arrays: read (and keep) each.
            items = []
            for _ in range(count):
                v, off = self._value(itype, off)
                items.append(v)
            return items, off
        raise ValueError(f"unknown metadata value type {vtype}")

    def _read(self) -> None:
        if bytes(self._buf[:4]) != MAGIC:
            raise ValueError("no GGUF magic")
        version, off = self._unpack("<I", 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, off = self._unpack("<Q", off)
        n_kv, off = self._unpack("<Q", off)
        for _ in range(n_kv):
            key, off = self._string(off)
            vtype, off = self._unpack("<I", off)
            self.fields[key], off = self._value(vtype, off)
        infos = []
        for _ in range(n_tensors):
            name, off = self._string(off)
            n_dims, off = self._unpack("<I", off)
            dims = struct.unpack_from(f"<{n_dims}Q", self._buf, off)
            off += 8 * n_dims
            ggml_type, off = self._unpack("<I", off)
            offset, off = self._unpack("<Q", off)
            infos.append((name, dims, ggml_type, offset))
        align = int(self.fields.get("general.alignment", DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment {align} is not a power of two")
        start = off + (-off % align)
        for name, dims, ggml_type, offset in infos:
            if name in self.tensors:
                raise ValueError(f"tensor {name} appears twice")
            self.tensors[name] = self._tensor(name, dims, ggml_type, start + offset)

    def _tensor(self, name: str, dims: tuple, ggml_type: int, at: int) -> GGUFTensor:
        import gguf

        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        shape = tuple(int(d) for d in reversed(dims))  # logical: rows last in the file's dims
        cols = shape[-1] if shape else 1
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if cols % block:
            raise ValueError(f"tensor {name}: {cols} is not a whole number of {qtype.name} blocks")
        row_bytes = cols // block * nbytes
        end = at + rows * row_bytes
        if end > len(self._buf):
            raise ValueError(f"tensor {name} runs past the end of the file")
        raw = self.data[at:end]
        blocks = raw.reshape(rows, row_bytes) if len(shape) == 2 else raw
        return GGUFTensor(qtype.name, blocks, shape)
