"""What an export starts from: a checkpoint, its tokenizer, and the eager
model built from them.

torchchat.loading names the checkpoint (an alias, a positional path or the
path flags, the same rule as generate's) and loads the tokenizer; this adds
what the runners need beside the program (bos/eos ids and their text, the
chat template) and builds the eager model on the CPU, in fp32 or a GGUF's
own formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchchat import loading
from torchchat.errors import UserError

if TYPE_CHECKING:
    from torchchat.checkpoint import Checkpoint
    from torchchat.config import ModelConfig
    from torchchat.model import Model
    from torchchat.tokenizer import Tokenizer


@dataclass
class Source:
    """A loaded checkpoint plus what the runners need to know about it."""

    ckpt: Checkpoint
    tokenizer: Tokenizer
    tokenizer_path: Path
    chat_template: str | None
    bos_id: int | None
    eos_ids: list[int]
    bos_token: str = ""
    eos_token: str = ""
    name: str = ""

    @property
    def config(self) -> ModelConfig:
        return self.ckpt.config


def checkpoint_of(options: loading.LoadOptions) -> Path:
    """The checkpoint `options` name; an exported artifact is refused."""
    source = loading.resolve_source(options)
    if source.checkpoint is None:
        raise UserError(f"{source.artifact} is an exported artifact, not a checkpoint")
    return source.checkpoint


def load_source(path: Path, tokenizer_path: Path | None = None) -> Source:
    """The checkpoint at `path` (its header and tensor index; weights are
    read by `build`) and its tokenizer, or `tokenizer_path`'s."""
    from torchchat import checkpoint as ckpt_mod

    ckpt = ckpt_mod.load_checkpoint(path)
    tok, tok_path = loading.load_tokenizer(loading.tokenizer_source(ckpt), tokenizer_path)
    eos = [int(x) for x in tok.eos_ids]
    return Source(
        ckpt=ckpt,
        tokenizer=tok,
        tokenizer_path=tok_path,
        chat_template=tok.chat_template,
        bos_id=None if tok.bos_id is None else int(tok.bos_id),
        eos_ids=eos,
        bos_token=tok.token_text(tok.bos_id),
        eos_token=tok.token_text(eos[0]) if eos else "",
        name=loading.Source(checkpoint=Path(path)).name,
    )


def build(source: Source, dtype_name: str, max_seq_length: int) -> Model:
    """The eager torchchat.model.Model with the checkpoint's weights."""
    from torchchat import checkpoint as ckpt_mod
    from torchchat.config import DTYPES

    return ckpt_mod.load_model(source.ckpt, DTYPES[dtype_name], max_seq_length, "cpu")


def build_native(source: Source, max_seq_length: int) -> tuple[Model, dict[str, int]]:
    """A GGUF's model in its own formats, in place (--quantize gguf), and how
    many weights run in each format."""
    from torchchat import checkpoint as ckpt_mod

    if source.ckpt.format != "gguf":
        raise UserError(
            f"--quantize gguf keeps a GGUF's own formats; {source.ckpt.path} is not a GGUF"
        )
    return ckpt_mod.load_native(source.ckpt, max_seq_length)
