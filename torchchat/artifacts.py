"""Loading exported artifacts behind the eager model's interface.

`load_pte(path)` and `load_pt2(path)` return an `ExportedModel`:
`forward(tokens[1, T], input_pos[T]) -> logits[1, vocab]` (last position),
like torchchat.model.Model, plus the metadata the export recorded. One
generation loop then drives eager, AOTI and ExecuTorch alike.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

# Keys export_llm writes into a .pt2 (all values are strings there).
PT2_FORMAT = "torchchat-llm-1"


class ArtifactError(Exception):
    """An artifact that is missing, malformed or cannot run on this host."""


class ExportedModel:
    kind = ""

    def __init__(self, path: Path, metadata: Dict[str, Any]):
        self.path = Path(path)
        self.metadata = metadata
        self.max_seq_length: int = int(metadata["max_seq_len"])
        self.vocab_size: int = int(metadata["vocab_size"])
        self.bos_id: Optional[int] = metadata.get("bos_id")
        self.eos_ids: Tuple[int, ...] = tuple(metadata.get("eos_ids", ()))

    @property
    def tokenizer_path(self) -> Optional[Path]:
        """The tokenizer file export_llm wrote beside the artifact, if present."""
        names = [self.metadata["tokenizer_file"]] if self.metadata.get("tokenizer_file") else []
        names += ["tokenizer.json", "tokenizer.model"]
        for n in names:
            p = self.path.parent / n
            if p.is_file():
                return p
        return None

    def _check_positions(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[0] != 1 or input_pos.shape != (tokens.shape[1],):
            raise ArtifactError(
                f"expected tokens [1, T] and input_pos [T], got {tuple(tokens.shape)} "
                f"and {tuple(input_pos.shape)}"
            )
        if int(input_pos[-1]) >= self.max_seq_length:
            raise ArtifactError(
                f"position {int(input_pos[-1])} is past the exported max_seq_length "
                f"{self.max_seq_length}"
            )

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens, input_pos)

    def reset_cache(self) -> None:
        """Positions index the cache directly, so restarting at 0 is a reset."""


class PteModel(ExportedModel):
    kind = "pte"

    def __init__(self, path: Path, program, method, metadata: Dict[str, Any]):
        super().__init__(path, metadata)
        self._program = program
        self._method = method
        self._dynamic = bool(metadata.get("enable_dynamic_shape"))
        tokens_meta = method.metadata.input_tensor_meta(0)
        # With dynamic shapes the program's token dim is an upper bound.
        self._max_chunk = max(1, int(tokens_meta.sizes()[1])) if self._dynamic else 1

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self._check_positions(tokens, input_pos)
        tokens = tokens.to(torch.long)
        input_pos = input_pos.to(torch.long)
        out = None
        # ExecuTorch's dynamic-shape graph takes the start position as [1];
        # a static one takes one token at a time.
        for s in range(0, tokens.shape[1], self._max_chunk):
            chunk = tokens[:, s:s + self._max_chunk].contiguous()
            pos = input_pos[s:s + 1] if self._dynamic else input_pos[s:s + chunk.shape[1]]
            out = self._method.execute([chunk, pos.contiguous()])[0]
        return out if out.dim() == 2 else out[:, -1]


class Pt2Model(ExportedModel):
    kind = "pt2"

    def __init__(self, path: Path, runner, metadata: Dict[str, Any]):
        super().__init__(path, metadata)
        self._runner = runner

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self._check_positions(tokens, input_pos)
        out = self._runner(tokens.to(torch.long), input_pos.to(torch.long))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out if out.dim() == 2 else out[:, -1]


# --- .pte ---------------------------------------------------------------------

PTE_METHODS = (
    "get_max_seq_len", "get_max_context_len", "get_n_layers", "get_vocab_size",
    "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape",
    "get_bos_id", "get_eos_ids",
)


def register_et_kernels() -> None:
    """Ops a .pte may use beyond the core set; they register on import.

    `custom_ops` is a submodule: the package's __init__ registers nothing.
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401


def pte_metadata(program) -> Dict[str, Any]:
    raw: Dict[str, Any] = {}
    for name in PTE_METHODS:
        if name in program.method_names:
            vals = list(program.load_method(name).execute([]))
            raw[name] = vals if name == "get_eos_ids" else vals[0]
    if "get_max_seq_len" not in raw or "get_vocab_size" not in raw:
        raise ArtifactError("the .pte lacks get_max_seq_len/get_vocab_size; it was not exported as an LLM")
    return {
        "max_seq_len": int(raw["get_max_seq_len"]),
        "max_context_len": int(raw.get("get_max_context_len", raw["get_max_seq_len"])),
        "vocab_size": int(raw["get_vocab_size"]),
        "n_layers": int(raw.get("get_n_layers", 0)),
        "use_kv_cache": bool(raw.get("use_kv_cache", False)),
        "use_sdpa_with_kv_cache": bool(raw.get("use_sdpa_with_kv_cache", False)),
        "enable_dynamic_shape": bool(raw.get("enable_dynamic_shape", False)),
        "bos_id": int(raw["get_bos_id"]) if "get_bos_id" in raw else None,
        "eos_ids": [int(x) for x in raw.get("get_eos_ids", [])],
        "methods": raw,
    }


def load_pte(path) -> PteModel:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ExecuTorch program not found: {path}")
    register_et_kernels()
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(str(path))
        meta = pte_metadata(program)
        method = program.load_method("forward")
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    if not meta["use_kv_cache"]:
        raise ArtifactError(f"{path} was exported without a KV cache; only KV-cache programs are supported")
    return PteModel(path, program, method, meta)


# --- .pt2 ---------------------------------------------------------------------


def read_pt2_metadata(path) -> Dict[str, str]:
    """The package's AOTI metadata, read without loading its shared library."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("wrapper_metadata.json")]
            if not names:
                names = [n for n in z.namelist() if n.endswith("_metadata.json")]
            if not names:
                raise ArtifactError(f"{path} is not an AOTInductor package (no metadata)")
            return json.loads(z.read(names[0]))
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path} is not an AOTInductor package (not a zip archive)") from None


def host_cpu_isa() -> List[str]:
    """Every vector ISA inductor can target here, e.g. ['AVX512', 'AVX2', ...]."""
    from torch._inductor import cpu_vec_isa

    found: List[str] = []
    for isa in cpu_vec_isa.valid_vec_isa_list():
        for word in str(isa).upper().split():
            if word not in found:
                found.append(word)
    return found


def check_cpu_isa(meta: Dict[str, str], path) -> None:
    """A package's kernels use the exporting host's ISA; refuse a weaker CPU.

    Loading it anyway would die of SIGILL somewhere in the first forward.
    """
    if meta.get("AOTI_DEVICE_KEY", "cpu") != "cpu":
        return
    need = meta.get("AOTI_CPU_ISA", "").upper().split()
    have = host_cpu_isa()
    missing = [w for w in need if w not in have and w != "INVALID_VEC_ISA"]
    if missing:
        raise ArtifactError(
            f"{path} was compiled for CPU ISA {' '.join(need)}; this CPU lacks "
            f"{' '.join(missing)} (has {' '.join(have) or 'no vector ISA'}). "
            "Re-export it on this machine."
        )


def parse_pt2_metadata(meta: Dict[str, str], path) -> Dict[str, Any]:
    if meta.get("torchchat_format") != PT2_FORMAT:
        raise ArtifactError(f"{path} was not written by //export:export_llm (no {PT2_FORMAT} metadata)")
    out: Dict[str, Any] = dict(meta)
    out["max_seq_len"] = int(meta["max_seq_len"])
    out["vocab_size"] = int(meta["vocab_size"])
    out["n_layers"] = int(meta.get("n_layers", "0"))
    out["bos_id"] = int(meta["bos_id"]) if meta.get("bos_id", "") != "" else None
    out["eos_ids"] = [int(x) for x in meta.get("eos_ids", "").split(",") if x != ""]
    return out


def load_pt2(path, device: str = "cpu") -> Pt2Model:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"AOTInductor package not found: {path}")
    raw = read_pt2_metadata(path)
    check_cpu_isa(raw, path)
    meta = parse_pt2_metadata(raw, path)
    import torch._inductor

    # A 4-bit package calls torchchat::q4_linear / q8_linear (by C shim or by
    # name): their library must be loaded, RTLD_GLOBAL, before the package is.
    try:
        from kernels import q4  # noqa: F401
    except (ImportError, OSError, ValueError):  # q4.Q4Error: library not built
        pass  # an fp32 package needs none; a 4-bit one fails below, by name
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as e:
        raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    return Pt2Model(path, runner, meta)


def load(path, device: str = "cpu") -> ExportedModel:
    p = Path(path)
    if p.suffix == ".pte":
        return load_pte(p)
    if p.suffix == ".pt2":
        return load_pt2(p, device)
    raise ArtifactError(f"{p}: expected a .pte or .pt2 file")
