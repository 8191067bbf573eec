"""Loading exported artifacts behind the eager model's interface.

`load_pte(path)` and `load_pt2(path)` return an `ExportedModel`:
`forward(tokens[1, T], input_pos[T]) -> logits[1, vocab]` (last position),
like torchchat.model.Model, plus the metadata the export recorded, and
`forward_all` (every position's logits, for eval) when exported with
--full-logits. One
generation loop then drives eager, AOTI and ExecuTorch alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from kernels import et_ops

PathLike = Union[str, "os.PathLike[str]"]

# Keys export_llm writes into a .pt2 (all values are strings there).
PT2_FORMAT = "torchchat-llm-1"
# A vision package's decoder inputs (its metadata's `inputs`) and the keys
# that describe its vision_encoder (export/vision_pt2.py).
PT2_VISION_INPUTS = "tokens,input_pos,embeds,is_image"
PT2_VISION_KEYS = ("dim", "image_size", "image_tokens", "boi_id", "eoi_id", "image_id", "resample")
# SmolVLM's tiling, in its packages only.
PT2_TILE_KEYS = ("longest_edge", "split", "patch_size", "scale_factor")


class ArtifactError(Exception):
    """An artifact that is missing, malformed or cannot run on this host."""


class ExportedModel:
    kind = ""

    def __init__(self, path: Path, metadata: dict[str, Any]):
        self.path = Path(path)
        self.metadata = metadata
        self.max_seq_length: int = int(metadata["max_seq_len"])
        self.vocab_size: int = int(metadata["vocab_size"])
        self.bos_id: int | None = metadata.get("bos_id")
        self.eos_ids: tuple[int, ...] = tuple(metadata.get("eos_ids", ()))

    @property
    def tokenizer_path(self) -> Path | None:
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

    def _raw(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_all(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits of every position, [T, vocab] (for eval). Only an artifact
        exported with --full-logits has them; others give the last only."""
        self._check_positions(tokens, input_pos)
        out = self._raw(tokens, input_pos)
        if out.dim() != 3:
            raise ArtifactError(
                f"{self.path} returns only the last position's logits; re-export it with "
                "export_llm --full-logits to evaluate it"
            )
        return out[0]

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens, input_pos)

    def reset_cache(self) -> None:
        """Positions index the cache directly, so restarting at 0 is a reset."""


class PteModel(ExportedModel):
    kind = "pte"

    def __init__(self, path: Path, program: Any, method: Any, metadata: dict[str, Any]):
        # program, method: executorch.runtime's Program and Method.
        super().__init__(path, metadata)
        self._program = program
        self._method = method
        self._dynamic = bool(metadata.get("enable_dynamic_shape"))
        tokens_meta = method.metadata.input_tensor_meta(0)
        # With dynamic shapes the program's token dim is an upper bound.
        self._max_chunk = max(1, int(tokens_meta.sizes()[1])) if self._dynamic else 1

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self._check_positions(tokens, input_pos)
        out = self._raw(tokens, input_pos)
        return out if out.dim() == 2 else out[:, -1]

    def _raw(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(torch.long)
        input_pos = input_pos.to(torch.long)
        outs = []
        # ExecuTorch's dynamic-shape graph takes the start position as [1];
        # a static one takes one token at a time.
        for s in range(0, tokens.shape[1], self._max_chunk):
            chunk = tokens[:, s : s + self._max_chunk].contiguous()
            pos = input_pos[s : s + 1] if self._dynamic else input_pos[s : s + chunk.shape[1]]
            outs.append(self._method.execute([chunk, pos.contiguous()])[0])
        # Full logits ([1, T, vocab]) join up across chunks; otherwise the last chunk's.
        return torch.cat(outs, dim=1) if outs[-1].dim() == 3 else outs[-1]


class Pt2Model(ExportedModel):
    kind = "pt2"

    def __init__(self, path: Path, runner: Any, metadata: dict[str, Any]):
        # runner: torch._inductor's AOTICompiledModel.
        super().__init__(path, metadata)
        self._runner = runner

    def forward(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, images: Sequence = ()
    ) -> torch.Tensor:
        """`images` as torchchat.model.Model takes them, (offset, embeds
        [n, dim]), with embeds from `vision()`'s encoder: each image's run
        goes through the decoder as one chunk with is_image set."""
        self._check_positions(tokens, input_pos)
        if images and not self.takes_images:
            raise ArtifactError(f"{self.path} has no vision encoder; it takes token ids only")
        out = None
        at = 0
        for offset, embeds in sorted(images, key=lambda im: im[0]):
            if offset > at:
                out = self._raw(tokens[:, at:offset], input_pos[at:offset])
            end = offset + embeds.shape[0]
            out = self._raw(tokens[:, offset:end], input_pos[offset:end], embeds[None])
            at = end
        if at < tokens.shape[1]:
            out = self._raw(tokens[:, at:], input_pos[at:])
        assert out is not None
        return out if out.dim() == 2 else out[:, -1]

    def __call__(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, images: Sequence = ()
    ) -> torch.Tensor:
        return self.forward(tokens, input_pos, images)

    @property
    def takes_images(self) -> bool:
        """Whether the package has a vision_encoder (export/vision_pt2.py)."""
        return self.metadata.get("inputs") == PT2_VISION_INPUTS

    def vision(self) -> Any:
        """The package's vision_encoder as a torchchat.vision.Vision; None
        for a text package."""
        if not self.takes_images:
            return None
        from torchchat import aoti
        from torchchat.vision import PackageVision, VisionConfig

        m = self.metadata
        encoder = aoti.Runner(self.path, model="vision_encoder")
        if m.get("longest_edge", 0) > 0:
            return self._smolvlm_vision(lambda pixels: encoder(pixels)[0])
        config = VisionConfig(
            # The tower's own shape is the package's business.
            hidden=0,
            intermediate=0,
            layers=0,
            heads=0,
            patch_size=0,
            eps=0.0,
            image_size=m["image_size"],
            text_dim=m["dim"],
            mm_tokens=m["image_tokens"],
            boi_id=m["boi_id"],
            eoi_id=m["eoi_id"],
            image_id=m["image_id"],
            resample=m["resample"],
        )
        return PackageVision(config, lambda pixels: encoder(pixels)[0])

    def _smolvlm_vision(self, encoder: Any) -> Any:
        from torchchat.vision_smolvlm import PackageSmolVLMVision, SmolVLMConfig

        m = self.metadata
        config = SmolVLMConfig(
            # The tower's own shape is the package's business.
            hidden=0,
            intermediate=0,
            layers=0,
            heads=0,
            eps=0.0,
            image_size=m["image_size"],
            patch_size=m["patch_size"],
            text_dim=m["dim"],
            scale_factor=m["scale_factor"],
            image_id=m["image_id"],
            longest_edge=m["longest_edge"],
            split=bool(m["split"]),
            resample=m["resample"],
        )
        return PackageSmolVLMVision(config, encoder)

    @property
    def n_slots(self) -> int:
        """Cache rows of a package exported with --slots (0: batch 1)."""
        return int(self.metadata.get("slots", 0))

    def _raw(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs = [tokens.to(torch.long), input_pos.to(torch.long)]
        if self.takes_images:  # embeds for an image's chunk, else none
            is_image = torch.tensor([int(embeds is not None)])
            if embeds is None:
                embeds = torch.zeros(1, tokens.shape[1], int(self.metadata["dim"]))
            inputs += [embeds.to(torch.float32).contiguous(), is_image]
        if self.n_slots:  # one sequence: slot 0, the last position's logits
            inputs += [torch.zeros_like(inputs[1]), input_pos.new_tensor([len(input_pos) - 1])]
        return self._runner(*inputs)[0]

    def forward_all(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Every position's logits, [T, vocab]: a package with slots names
        the positions it returns (`last`), so it has them without
        --full-logits (speculative decoding verifies with it, in row 0)."""
        if not self.n_slots:
            return super().forward_all(tokens, input_pos)
        self._check_positions(tokens, input_pos)
        pos = input_pos.to(torch.long)
        every = torch.arange(len(pos))
        out = self._runner(tokens.to(torch.long), pos, torch.zeros_like(pos), every)[0]
        return out.reshape(len(pos), -1)

    def forward_slots(self, entries: list, images: Sequence = ()) -> torch.Tensor:
        """SlotModel.forward_slots over a package exported with --slots: the
        last logits of each (slot, ids, start) entry, [entries, vocab], or
        every id's of an entry (slot, ids, start, True)."""
        from torchchat.slots import slot_inputs

        if images:
            raise ArtifactError(f"{self.path} takes token ids only, not images")

        inputs = slot_inputs(entries, self.n_slots, self.max_seq_length)[:4]
        return self._runner(*inputs)[0].reshape(len(inputs[3]), -1)

    @property
    def gives_hidden(self) -> bool:
        """Whether the package returns hidden states beside its logits
        (every package with slots does, from the release that added them)."""
        return "hidden" in self.metadata.get("outputs", "").split(",")

    def hidden_slots(self, entries: list) -> list[torch.Tensor]:
        """SlotModel.hidden_slots over a package with hidden states: every
        id's last hidden state, [len(ids), dim] per (slot, ids, start)."""
        from torchchat.slots import slot_inputs

        if not self.gives_hidden:
            raise ArtifactError(f"{self.path} returns logits only (no hidden states)")
        tokens, pos, slots, _, spans = slot_inputs(entries, self.n_slots, self.max_seq_length)
        every = torch.arange(tokens.shape[1])
        h = self._runner(tokens, pos, slots, every)[1].reshape(tokens.shape[1], -1)
        return [h[first : first + n] for _, first, n, _ in spans]


# --- .pte ---------------------------------------------------------------------

PTE_METHODS = (
    "get_max_seq_len",
    "get_max_context_len",
    "get_n_layers",
    "get_vocab_size",
    "use_kv_cache",
    "use_sdpa_with_kv_cache",
    "enable_dynamic_shape",
    "get_bos_id",
    "get_eos_ids",
)
# Present only in a .pte that runs torchchat's kernels (kernels/et_ops.py).
PTE_OPTIONAL_METHODS = (et_ops.METADATA_METHOD,)


def register_et_kernels() -> str | None:
    """Ops a .pte may use beyond the core set; they register on import.

    ExecuTorch's llama:: and quantized_decomposed:: kernels come with the
    wheel, torchchat's (torchchat::q4_linear/q8_linear, a linear:int4 .pte)
    from //kernels:libtorchchat_et_ops.so. Returns why the latter could not
    be loaded, or None: only a .pte that needs them fails for it.
    `custom_ops` is a submodule: the package's __init__ registers nothing.
    Their imports pull in torchao, which warns about CUDA libraries that a
    CPU-only machine never has; those warnings are not the user's problem.
    """
    import logging
    import warnings

    quiet = [logging.getLogger(n) for n in ("torchao", "root")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
            import executorch.kernels.quantized  # noqa: F401
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    try:
        et_ops.load()
    except (ImportError, OSError, RuntimeError) as e:
        return str(e)
    return None


def _needs_torchchat_kernels(path: Path, meta: dict[str, Any], why: str) -> ArtifactError:
    version = meta["methods"].get(et_ops.METADATA_METHOD)
    return ArtifactError(
        f"{path} runs torchchat's ExecuTorch kernels ({', '.join(et_ops.OPS)}, "
        f"version {version}), which live in {et_ops.LIB_NAME} (//kernels:{et_ops.LIB_NAME}; "
        f"et_run links them): {why}"
    )


# A .pte is a flatbuffer whose file identifier, at bytes 4-8, is "ET" and a
# schema version. Checked before ExecuTorch sees the bytes: its Python
# binding aborts the process on some random inputs.
PTE_IDENTIFIER = b"ET"


def check_pte_header(path: Path) -> None:
    """Refuses what is not a .pte, and a .pte cut short (its extended
    header, "eh00", records how long the file must be)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != PTE_IDENTIFIER:
        raise ArtifactError(
            f"{path} is not an ExecuTorch program (no ET file identifier; {size} bytes)"
        )
    if head[8:12] == b"eh00" and len(head) >= 40:
        program_size, segment_base, segment_size = struct.unpack_from("<QQQ", head, 16)
        need = max(program_size, segment_base + segment_size)
        if size < need:
            raise ArtifactError(
                f"{path} is truncated: its header says {need} bytes, the file has {size}"
            )


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """ExecuTorch's runtime logs to file descriptor 2 as it loads (CPU probing,
    then the reason a load fails). Capture it while loading: a user sees one
    error line, with the runtime's last word in it, or nothing on success."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            lines.extend(f.read().decode(errors="replace").splitlines())


def _last_log_line(lines: list[str]) -> str:
    # "[program.cpp:114] File size is too small..." -> its message.
    for line in reversed(lines):
        text = line.split("] ", 1)[-1].strip()
        if text:
            return text
    return ""


def pte_metadata(program: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name in PTE_METHODS + PTE_OPTIONAL_METHODS:
        if name in program.method_names:
            vals = list(program.load_method(name).execute([]))
            raw[name] = vals if name == "get_eos_ids" else vals[0]
    if "get_max_seq_len" not in raw or "get_vocab_size" not in raw:
        raise ArtifactError(
            "the .pte lacks get_max_seq_len/get_vocab_size; it was not exported as an LLM"
        )
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


def load_pte(path: PathLike) -> PteModel:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ExecuTorch program not found: {path}")
    check_pte_header(path)
    no_kernels = register_et_kernels()
    from executorch.runtime import Runtime

    meta: dict[str, Any] | None = None
    error: Exception | None = None
    with native_stderr_captured() as log:
        try:
            program = Runtime.get().load_program(str(path))
            meta = pte_metadata(program)
            if "vision_encoder" in program.method_names:
                raise ArtifactError(
                    f"{path} is a program with a vision encoder (export/README.md); "
                    "run it with et_run, or the checkpoint here"
                )
            method = None
            if not (no_kernels and et_ops.METADATA_METHOD in meta["methods"]):
                method = program.load_method("forward")
            error = None
        except Exception as e:  # ArtifactError included: raised as it is below
            error = e
    if isinstance(error, ArtifactError):
        raise error
    if meta is not None and et_ops.METADATA_METHOD in meta["methods"]:
        if no_kernels:
            raise _needs_torchchat_kernels(path, meta, no_kernels)
        if error is not None and "torchchat::" in "\n".join(log):
            raise _needs_torchchat_kernels(path, meta, _last_log_line(log)) from error
    if error is not None or meta is None:
        why = _last_log_line(log) or f"{type(error).__name__}: {error}"
        raise ArtifactError(f"cannot load {path}: {why}") from error
    if not meta["use_kv_cache"]:
        raise ArtifactError(
            f"{path} was exported without a KV cache; only KV-cache programs are supported"
        )
    return PteModel(path, program, method, meta)


# --- .pt2 ---------------------------------------------------------------------


def read_pt2_metadata(path: PathLike) -> dict[str, str]:
    """The package's AOTI metadata, read without loading its shared library."""
    try:
        with zipfile.ZipFile(path) as z:
            # A vision package holds a second model (vision_encoder) with its
            # own metadata: the decoder's ("model") is the package's.
            every = [n for n in z.namelist() if n.endswith("_metadata.json")]
            every.sort(key=lambda n: "/aotinductor/model/" not in n)
            names = [n for n in every if n.endswith("wrapper_metadata.json")] or every
            if not names:
                raise ArtifactError(f"{path} is not an AOTInductor package (no metadata)")
            return json.loads(z.read(names[0]))
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path} is not an AOTInductor package (not a zip archive)") from None


def host_cpu_isa() -> list[str]:
    """Every vector ISA inductor can target here, e.g. ['AVX512', 'AVX2', ...]."""
    from torch._inductor import cpu_vec_isa

    found: list[str] = []
    for isa in cpu_vec_isa.valid_vec_isa_list():
        for word in str(isa).upper().split():
            if word not in found:
                found.append(word)
    return found


def check_cpu_isa(meta: dict[str, str], path: PathLike) -> None:
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


def pt2_metadata(
    *,
    model_name: str,
    tokenizer_file: str,
    tokenizer_type: str,
    bos_id: int | None,
    eos_ids: Sequence[int],
    max_seq_len: int,
    vocab_size: int,
    n_layers: int,
    dtype: str,
    quantize: str,
    slots: int = 0,
) -> dict[str, str]:
    """What a .pt2 records for its runners (all strings); parse_pt2_metadata
    reads it back, and aoti_run reads the same keys from C++."""
    # A package with slots returns the hidden states beside the logits.
    batched = {"slots": str(slots), "outputs": "logits,hidden"} if slots else {}
    return {
        **batched,
        "torchchat_format": PT2_FORMAT,
        "model_name": model_name,
        "tokenizer_file": tokenizer_file,
        "tokenizer_type": tokenizer_type,
        "bos_id": "" if bos_id is None else str(bos_id),
        "eos_ids": ",".join(str(x) for x in eos_ids),
        "max_seq_len": str(max_seq_len),
        "vocab_size": str(vocab_size),
        "n_layers": str(n_layers),
        "dtype": dtype,
        "quantize": quantize,
        # forward(tokens[1, T], input_pos[T]) -> logits[1, vocab]; with
        # slots, forward(tokens, input_pos, slots[T], last[E]) -> ([E, vocab],
        # [E, dim])
        "input_pos": "positions",
    }


def parse_pt2_metadata(meta: dict[str, str], path: PathLike) -> dict[str, Any]:
    if meta.get("torchchat_format") != PT2_FORMAT:
        raise ArtifactError(
            f"{path} was not written by //export:export_llm (no {PT2_FORMAT} metadata)"
        )
    out: dict[str, Any] = dict(meta)
    out["max_seq_len"] = int(meta["max_seq_len"])
    out["vocab_size"] = int(meta["vocab_size"])
    out["n_layers"] = int(meta.get("n_layers", "0"))
    out["slots"] = int(meta.get("slots", "0"))
    out["bos_id"] = int(meta["bos_id"]) if meta.get("bos_id", "") != "" else None
    out["eos_ids"] = [int(x) for x in meta.get("eos_ids", "").split(",") if x != ""]
    if "inputs" in meta:
        if meta["inputs"] != PT2_VISION_INPUTS:
            raise ArtifactError(
                f"{path}'s decoder takes ({meta['inputs']}); this torchchat knows "
                f"({PT2_VISION_INPUTS})"
            )
        try:
            out.update({k: int(meta[k]) for k in PT2_VISION_KEYS})
            out.update({k: int(meta[k]) for k in PT2_TILE_KEYS if k in meta})
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"{path}: bad vision metadata ({e})") from None
    return out


def load_pt2(path: PathLike, device: str = "cpu") -> Pt2Model:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"AOTInductor package not found: {path}")
    raw = read_pt2_metadata(path)
    check_cpu_isa(raw, path)
    meta = parse_pt2_metadata(raw, path)
    return open_pt2(path, meta)


def open_pt2(
    path: Path, meta: dict[str, Any], constants: dict[str, torch.Tensor] | None = None
) -> Pt2Model:
    """Loads a package whose metadata and CPU ISA have been checked; a package
    compiled with external weights runs on `constants` (aoti.Runner)."""
    from torchchat import aoti

    # A quantized package calls torchchat::q4_linear / q8_linear / ggml_linear
    # (by C shim or by name): their library must be loaded, RTLD_GLOBAL, and
    # their fake kernels registered, before the package is.
    try:
        from kernels.ggml import ops  # noqa: F401
    except (ImportError, OSError, ValueError):  # q4.Q4Error: library not built
        pass  # an fp32 package needs none; a quantized one fails below, by name
    try:
        runner = aoti.Runner(path, constants)
    except Exception as e:
        raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    return Pt2Model(path, runner, meta)


def load(path: PathLike, device: str = "cpu") -> ExportedModel:
    p = Path(path)
    if p.suffix == ".pte":
        return load_pte(p)
    if p.suffix == ".pt2":
        return load_pt2(p, device)
    raise ArtifactError(f"{p}: expected a .pte or .pt2 file")
