"""The tokenizer files written next to an exported artifact.

Runners (ExecuTorch's TextLLMRunner, et_run, aoti_run) take a tokenizer
file, not a checkpoint, so every export leaves one beside the .pte/.pt2:
the checkpoint's own tokenizer.json / tokenizer.model, or for a GGUF-only
model a tokenizer.json built from the GGUF metadata. tokenizer_config.json
carries the chat template and the special tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torchchat.atomic import atomic_output


class TokenizerFilesError(Exception):
    pass


@dataclass
class TokenizerFiles:
    file_name: str  # the runner's tokenizer file, relative to the artifact
    kind: str  # "hf_json", "sentencepiece" or "tiktoken"
    written: list[Path]


def planned_names(tokenizer_path: Path) -> list[str]:
    """File names an export will write, so they can be checked up front."""
    p = Path(tokenizer_path)
    main = p.name if p.name in ("tokenizer.json", "tokenizer.model") else "tokenizer.json"
    if p.suffix not in (".gguf", ".json"):
        main = "tokenizer.model"
    extra = ["tokenizer.model.json"] if tiktoken_sidecar(p).is_file() else []
    return [main, "tokenizer_config.json", *extra]


def tiktoken_sidecar(path: Path) -> Path:
    """`<file>.json`: a tiktoken file's pattern and special tokens, which
    llm_tokenizers.load reads beside it (tokenizers/tiktoken.h)."""
    return Path(str(path) + ".json")


def model_file_kind(path: Path) -> str:
    """tiktoken files are lines of `base64 rank`; sentencepiece is protobuf."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n", 1)[0]
    parts = head.split(b" ")
    if len(parts) == 2 and parts[1].strip().isdigit():
        return "tiktoken"
    return "sentencepiece"


def write(
    out_dir: Path,
    tokenizer_path: Path,
    chat_template: str | None,
    bos_token: str,
    eos_token: str,
) -> TokenizerFiles:
    out_dir = Path(out_dir)
    src = Path(tokenizer_path)
    written: list[Path] = []
    base_config: dict = {}
    if src.suffix == ".gguf":
        base_config = _tokenizer_json_from_gguf(src, out_dir / "tokenizer.json")
        written.append(out_dir / "tokenizer.json")
        main, kind = "tokenizer.json", "hf_json"
    elif src.name == "tokenizer.json" or src.suffix == ".json":
        _copy(src, out_dir / "tokenizer.json")
        written.append(out_dir / "tokenizer.json")
        main, kind = "tokenizer.json", "hf_json"
        cfg = src.parent / "tokenizer_config.json"
        if cfg.is_file():
            base_config = json.loads(cfg.read_text())
    else:
        _copy(src, out_dir / "tokenizer.model")
        written.append(out_dir / "tokenizer.model")
        main, kind = "tokenizer.model", model_file_kind(src)
        if kind == "tiktoken" and tiktoken_sidecar(src).is_file():
            _copy(tiktoken_sidecar(src), tiktoken_sidecar(out_dir / "tokenizer.model"))
            written.append(tiktoken_sidecar(out_dir / "tokenizer.model"))
    config = dict(base_config)
    if chat_template:
        config["chat_template"] = chat_template
    config.setdefault("bos_token", bos_token)
    config.setdefault("eos_token", eos_token)
    # Keys that only make sense on the machine that wrote them.
    for k in ("is_local", "local_files_only", "name_or_path"):
        config.pop(k, None)
    _write_text(
        out_dir / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    )
    written.append(out_dir / "tokenizer_config.json")
    return TokenizerFiles(main, kind, written)


def _tokenizer_json_from_gguf(gguf_path: Path, dest: Path) -> dict:
    """tokenizer.json from GGUF metadata; returns transformers' tokenizer_config."""
    try:  # this repo's tokenizer library, once it offers the conversion
        import llm_tokenizers

        writer = getattr(llm_tokenizers, "write_tokenizer_json", None)
    except ImportError:
        writer = None
    if writer is not None:
        # It writes tokenizer.json + tokenizer_config.json into a directory.
        with tempfile.TemporaryDirectory(dir=dest.parent) as d:
            try:
                writer(str(gguf_path), d)
            except Exception as e:
                raise TokenizerFilesError(
                    f"cannot build tokenizer.json from {gguf_path}: {e}"
                ) from e
            _copy(Path(d) / "tokenizer.json", dest)
            cfg = Path(d) / "tokenizer_config.json"
            return json.loads(cfg.read_text()) if cfg.is_file() else {}
    # INTERIM: transformers' GGUF -> tokenizers conversion, until
    # llm_tokenizers.write_tokenizer_json exists.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:
        raise TokenizerFilesError(
            f"cannot build tokenizer.json from {gguf_path}: {type(e).__name__}: {e}"
        ) from e
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        produced = Path(d) / "tokenizer.json"
        if not produced.is_file():
            raise TokenizerFilesError(f"{gguf_path}: transformers wrote no tokenizer.json")
        _copy(produced, dest)
        cfg = Path(d) / "tokenizer_config.json"
        return json.loads(cfg.read_text()) if cfg.is_file() else {}


def _copy(src: Path, dest: Path) -> None:
    with atomic_output(str(dest)) as tmp:
        shutil.copyfile(src, tmp)


def _write_text(dest: Path, text: str) -> None:
    with atomic_output(str(dest)) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
