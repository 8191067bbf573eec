"""Meta's consolidated checkpoints: params.json and one consolidated.*.pth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from torchchat.checkpoint.base import Checkpoint, CheckpointError, find_tokenizer
from torchchat.config import ModelConfig

# Meta's Llama 3 instruct format: each turn is a role header, a blank line,
# the trimmed text and <|eot_id|>; bos opens the conversation. Meta's
# `original/` checkpoints ship no template (upstream torchchat had this
# format built in for them).
LLAMA3_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# A tiktoken vocabulary line: base64 bytes, a space, the rank.
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+\r?\n")


def _is_tiktoken(path: Path | None) -> bool:
    """Llama 3's tokenizer.model is a tiktoken file; Llama 2's is a
    SentencePiece protobuf."""
    if path is None or path.suffix == ".json":
        return False
    with open(path, "rb") as f:
        return bool(_TIKTOKEN_LINE.match(f.readline(256)))


def load_meta(p: Path) -> Checkpoint:
    d = p if p.is_dir() else p.parent
    params = json.loads((d / "params.json").read_text())
    shards = [p] if p.is_file() else sorted(d.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{d} has params.json but no consolidated.*.pth")
    if len(shards) > 1:
        raise CheckpointError(
            f"{d} has {len(shards)} model-parallel shards; merge them first "
            "(only single-shard Meta checkpoints are supported)"
        )
    sd = torch.load(str(shards[0]), map_location="cpu", weights_only=True, mmap=True)
    sd = {k: v for k, v in sd.items() if k != "rope.freqs"}
    vocab = sd["tok_embeddings.weight"].shape[0]
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    config = ModelConfig.from_meta_params(params, vocab, hidden)
    tokenizer = find_tokenizer(d)
    return Checkpoint(
        config=config,
        path=d,
        format="meta",
        weights=sd,
        tokenizer_path=tokenizer,
        chat_template=LLAMA3_CHAT_TEMPLATE if _is_tiktoken(tokenizer) else None,
    )
