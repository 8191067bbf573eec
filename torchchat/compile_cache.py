"""The CLI's compiled model: an AOTInductor package built on first use.

Why AOTInductor (measured on the built-in model, 2-core Intel Xeon, runner/
README): eager decode pays Python for ~600 ops a token; `torch.compile`
removes that but re-traces the model with dynamo on every start (about 8 s
with a warm Inductor cache), while a package loads in about 0.3 s and
decodes as fast. So the first run compiles the eager model, in the
precision the flags ask for, into `$XDG_CACHE_HOME/torchchat/compiled` and
every later run with the same checkpoint, flags, code and CPU loads it
without reading the checkpoint's weights at all.

An entry is `<key>.json` (what the CLI needs besides the package: the
tokenizer, its ids and template) and `<key>.pt2`. The package is written
last, atomically, so its presence commits the entry. A GGUF run in its own
formats is compiled with external weights: the package is code only, and
each start hands it the file's tensors in place (mmapped, never copied),
plus `<key>.constants.pt`, the few small tensors export lifted out of the
code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchchat.atomic import atomic_output

if TYPE_CHECKING:
    from torchchat.artifacts import Pt2Model
    from torchchat.checkpoint import Checkpoint
    from torchchat.model import Model
    from torchchat.slots import SlotModel

CACHE_ENV = "TORCHCHAT_COMPILE_CACHE"
# Bumped when an entry's layout changes.
ENTRY_FORMAT = 1


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "torchchat" / "compiled"


def _files_of(checkpoint: Path) -> list[Path]:
    """The files a checkpoint's model, tokenizer and template come from."""
    if checkpoint.is_dir():
        d = checkpoint
    elif checkpoint.suffix == ".gguf":
        return [checkpoint]
    else:
        d = checkpoint.parent  # a Meta .pth reads params.json beside it
    return sorted(p for p in d.iterdir() if p.is_file())


def _code_files() -> list[Path]:
    """Sources that decide the compiled graph, and the kernel library."""
    from kernels import q4, row_sdpa
    from kernels.ggml import ops as ggml_ops
    from torchchat import aoti, attention, blocks, model, quantize, slots

    mods = (aoti, attention, blocks, model, quantize, slots, q4, row_sdpa, ggml_ops)
    files = [Path(str(m.__file__)) for m in mods]
    # Every reader of the checkpoint package decides weights and layouts.
    files += sorted((Path(str(model.__file__)).parent / "checkpoint").glob("*.py"))
    files.append(Path(__file__))
    lib = q4.library_path()
    return files + ([lib] if lib.is_file() else [])


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(dist: str) -> str:
    try:
        return pkg_metadata.version(dist)
    except pkg_metadata.PackageNotFoundError:
        return ""


def key(checkpoint: Path, settings: dict[str, Any]) -> str:
    """Names the compiled model for these inputs; any change makes a new key.

    Files count by path, size and mtime (hashing gigabytes would cost more
    than the compile saves); code files by content.
    """
    h = hashlib.sha256()
    doc = {
        "format": ENTRY_FORMAT,
        "settings": settings,
        "files": [
            [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
            for p in _files_of(checkpoint)
        ],
        "versions": {d: _version(d) for d in ("torch", "executorch", "torchao")},
        "cpu": _cpu_flags(),
    }
    h.update(json.dumps(doc, sort_keys=True).encode())
    for p in _code_files():
        h.update(p.read_bytes())
    return h.hexdigest()[:24]


def _pt2_metadata(
    ckpt: Checkpoint, model: Model, dtype_name: str, counts: dict[str, int], slots: int
) -> dict[str, str]:
    from torchchat.artifacts import pt2_metadata

    return pt2_metadata(
        model_name=ckpt.path.name,
        tokenizer_file="",
        tokenizer_type="",
        bos_id=ckpt.bos_id,
        eos_ids=ckpt.eos_ids,
        max_seq_len=model.max_seq_length,
        vocab_size=ckpt.config.vocab_size,
        n_layers=ckpt.config.n_layers,
        dtype=dtype_name,
        quantize=json.dumps(counts),
        slots=slots,
    )


def _constants_path(k: str) -> Path:
    return cache_dir() / f"{k}.constants.pt"


def lookup(k: str) -> dict[str, Any] | None:
    """The entry's description, or None when it is absent or unreadable."""
    d = cache_dir()
    pt2, doc = d / f"{k}.pt2", d / f"{k}.json"
    if not pt2.is_file() or not doc.is_file():
        return None
    try:
        entry = json.loads(doc.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(entry, dict) and entry.get("key") == k and "tokenizer" in entry
    if ok and entry.get("external_weights") and not _constants_path(k).is_file():
        return None
    return entry if ok and "info" in entry else None


def program(model: Model, slots: int) -> Model | SlotModel:
    """What an entry compiles: the model, or with `slots` the server's
    batched SlotModel over it."""
    from torchchat.slots import SlotModel

    return SlotModel(model, slots, traceable=True) if slots else model


def _recipe(constants: dict[str, torch.Tensor], ckpt: Checkpoint) -> tuple:
    """How to rebuild each constant a code-only package needs without
    building the model: a GGUF tensor in place (by its Meta name), zeros
    (the KV cache), or a stored copy (norms, RoPE tables, masks: small; one
    copy of tensors that are equal, as the layers' masks are)."""
    by_ptr = {t.blocks.ctypes.data: name for name, t in ckpt.gguf.items()}
    recipe: dict[str, Any] = {}
    stored: list[torch.Tensor] = []
    for name, t in constants.items():
        key = by_ptr.get(t.data_ptr()) if t.numel() else None
        if key is not None:
            recipe[name] = {"gguf": key, "float": t.dtype == torch.float32}
        elif name.endswith(("k_cache", "v_cache")):
            recipe[name] = {"zeros": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            same = next(
                (
                    i
                    for i, u in enumerate(stored)
                    if u.dtype == t.dtype and u.shape == t.shape and torch.equal(u, t)
                ),
                None,
            )
            if same is None:
                stored.append(t.detach().contiguous())
                same = len(stored) - 1
            recipe[name] = {"stored": same}
    return recipe, stored


def constants(k: str, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The constants of entry `k`'s code-only package, from `ckpt` (a GGUF
    read in place) and what `store` kept: no model is built."""
    data = torch.load(_constants_path(k), weights_only=True)
    views: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, how in data["recipe"].items():
        if "gguf" in how:
            t = ckpt.gguf[how["gguf"]]
            if how["gguf"] not in views:
                views[how["gguf"]] = torch.from_numpy(t.blocks)
            v = views[how["gguf"]]
            out[name] = v.view(torch.float32).reshape(t.shape) if how["float"] else v
        elif "zeros" in how:
            out[name] = torch.zeros(how["zeros"], dtype=getattr(torch, how["dtype"]))
        else:
            out[name] = data["stored"][how["stored"]]
    return out


def open_entry(k: str, constants: dict[str, torch.Tensor] | None = None) -> Pt2Model:
    """The entry's package, loaded; its metadata was written by `store`. A
    code-only package (external weights) runs on `constants` in place."""
    from torchchat import artifacts

    path = cache_dir() / f"{k}.pt2"
    meta = artifacts.parse_pt2_metadata(artifacts.read_pt2_metadata(path), path)
    return artifacts.open_pt2(path, meta, constants)


def store(
    k: str,
    settings: dict[str, Any],
    compiled: Model | SlotModel,
    ckpt: Checkpoint,
    dtype_name: str,
    counts: dict[str, int],
    info: dict[str, Any],
    tokenizer: dict[str, Any],
    on_stage: Callable[[str], None] | None = None,
    slots: int = 0,
    external_weights: bool = False,
) -> dict[str, torch.Tensor] | None:
    """Compiles `compiled` (a `program`) into the entry `k`. With
    `external_weights` the package holds no weights: returns the constants
    it runs on (the program's own tensors, in place), and keeps how to
    rebuild them from the checkpoint (`constants`).

    Entries an older version of the same checkpoint and settings left behind
    are removed, so editing a checkpoint does not grow the cache.
    """
    from torchchat import aoti

    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    entry = {
        "key": k,
        "source": str(ckpt.path.resolve()),
        "settings": settings,
        "info": info,
        "tokenizer": tokenizer,
        "external_weights": external_weights,
    }
    with atomic_output(str(d / f"{k}.json")) as tmp:
        Path(tmp).write_text(json.dumps(entry, indent=1))
    from torchchat.slots import SlotModel

    model = compiled.model if isinstance(compiled, SlotModel) else compiled
    metadata = _pt2_metadata(ckpt, model, dtype_name, counts, slots)
    extra = aoti.compile_package(compiled, d / f"{k}.pt2", metadata, on_stage, external_weights)
    result = None
    if external_weights:
        result = dict(aoti.module_constants(compiled), **extra)
        recipe, stored = _recipe(result, ckpt)
        with atomic_output(str(_constants_path(k))) as tmp:
            torch.save({"recipe": recipe, "stored": stored}, tmp)
    _remove_superseded(d, k, str(ckpt.path.resolve()), settings)
    return result


def remove(k: str) -> None:
    for suffix in (".pt2", ".json", ".constants.pt"):
        (cache_dir() / f"{k}{suffix}").unlink(missing_ok=True)


def _remove_superseded(d: Path, k: str, source: str, settings: dict[str, Any]) -> None:
    for doc in d.glob("*.json"):
        if doc.stem == k:
            continue
        try:
            other = json.loads(doc.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict):
            continue
        if other.get("source") == source and other.get("settings") == settings:
            remove(doc.stem)
