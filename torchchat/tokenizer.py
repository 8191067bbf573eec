"""Tokenizer interface for generation and chat.

The implementation is this repo's C++ library (`llm_tokenizers`) when it is
importable. Until it lands, a TEMPORARY fallback (marked below; delete it
once @tokenizers//:llm_tokenizers is a dependency of //torchchat) uses
transformers' GGUF tokenizer conversion, HF `tokenizers` files, or
pytorch_tokenizers for tiktoken / sentencepiece models.

Chat templates are rendered here with jinja2 in every case.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jinja2
import jinja2.sandbox


class TokenizerError(Exception):
    pass


# Used only when a checkpoint carries no template of its own (e.g. a Meta
# consolidated checkpoint with a bare tokenizer.model).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% set sys = namespace(text='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys.text = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ bos_token }}[INST] {{ sys.text }}{{ m['content'] | trim }} [/INST]"
    "{% set sys.text = '' %}{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


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

    def render(self, messages: Sequence[Dict[str, str]], add_generation_prompt=True) -> str:
        try:
            return self._t.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as e:
            raise TokenizerError(f"chat template failed: {e}") from e


def _raise(msg):
    raise jinja2.TemplateError(msg)


class Tokenizer:
    """encode/decode/stream_decoder, bos/eos ids, chat template text."""

    def __init__(self, impl, chat_template: Optional[str], bos_id, eos_ids, backend: str,
                 add_bos: bool = True):
        self._impl = impl
        self.add_bos = add_bos and bos_id is not None  # for prompts without a template
        self.chat_template = chat_template
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.backend = backend

    def encode(self, text: str, bos: bool = False) -> List[int]:
        return self._impl.encode(text, bos)

    def decode(self, ids: Sequence[int]) -> str:
        return self._impl.decode(list(ids))

    def token_text(self, i: Optional[int]) -> str:
        if i is None:
            return ""
        return self._impl.decode([i]) if hasattr(self._impl, "decode") else ""

    def stream_decoder(self):
        return self._impl.stream_decoder()

    def template(self) -> Optional[ChatTemplate]:
        if not self.chat_template:
            return None
        eos = self.token_text(self.eos_ids[0]) if self.eos_ids else ""
        return ChatTemplate(self.chat_template, self.token_text(self.bos_id), eos)


def load(path: os.PathLike | str, chat_template: Optional[str] = None,
         bos_id: Optional[int] = None, eos_ids: Sequence[int] = (),
         add_bos: Optional[bool] = None) -> Tokenizer:
    """Tokenizer for a GGUF file, tokenizer.json, or tokenizer.model."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer not found: {p}")
    try:
        import llm_tokenizers  # this repo's C++ library
    except ImportError:
        llm_tokenizers = None
    if llm_tokenizers is not None:
        try:
            tok = llm_tokenizers.from_gguf(str(p)) if p.suffix == ".gguf" else llm_tokenizers.load(str(p))
        except (llm_tokenizers.TokenizerError, OSError) as e:
            raise TokenizerError(f"cannot load tokenizer {p}: {e}") from e
        native_bos = tok.bos_id if tok.bos_id >= 0 else None
        if add_bos is None:  # the tokenizer library's rule, shared with the C++ runners
            add_bos = tok.add_bos
        return Tokenizer(
            _Native(tok),
            chat_template or tok.chat_template or None,
            native_bos if bos_id is None else bos_id,
            tuple(eos_ids) or tuple(tok.eos_ids),
            "llm_tokenizers",
            add_bos,
        )
    return _fallback_load(p, chat_template, bos_id, eos_ids, add_bos)


class _Native:
    def __init__(self, tok):
        self.tok = tok

    def encode(self, text, bos):
        return list(self.tok.encode(text, bos=bos, eos=False, allowed_special="all"))

    def decode(self, ids):
        return self.tok.decode(ids)

    def stream_decoder(self):
        return self.tok.stream_decoder()


# ---------------------------------------------------------------------------
# TEMPORARY FALLBACK: remove once llm_tokenizers is a dependency of //torchchat.
# ---------------------------------------------------------------------------


class _TextStreamDecoder:
    """UTF-8-safe streaming over a decode() that works on whole id lists.

    Each new token is decoded together with the previous one as context (so
    sentencepiece keeps its leading spaces) and text is released only once
    it no longer ends in a partial character (U+FFFD).
    """

    def __init__(self, decode):
        self._decode = decode
        self._ids: List[int] = []
        self._read = 0  # ids before this index have been printed

    def push(self, i: int) -> str:
        self._ids.append(i)
        prev = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        if len(text) <= len(prev) or text.endswith("\ufffd"):
            return ""
        # Keep one printed token as context for the next decode.
        self._ids = self._ids[self._read - 1:] if self._read else self._ids
        self._read = len(self._ids)
        return text[len(prev):]

    def flush(self) -> str:
        prev = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(prev):] if len(text) > len(prev) else ""


class _HF:
    def __init__(self, tok):
        self.tok = tok  # transformers tokenizer

    def encode(self, text, bos):
        ids = self.tok.encode(text, add_special_tokens=False)
        if bos and self.tok.bos_token_id is not None:
            ids = [self.tok.bos_token_id] + ids
        return ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def stream_decoder(self):
        return _TextStreamDecoder(self.decode)


class _PT:
    def __init__(self, tok):
        self.tok = tok  # pytorch_tokenizers

    def encode(self, text, bos):
        return list(self.tok.encode(text, bos=bos, eos=False))

    def decode(self, ids):
        return self.tok.decode(ids)

    def stream_decoder(self):
        return _TextStreamDecoder(self.decode)


def _fallback_load(p: Path, chat_template, bos_id, eos_ids, add_bos) -> Tokenizer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if p.suffix == ".gguf" or p.name == "tokenizer.json":
            import transformers

            transformers.logging.set_verbosity_error()
            from transformers import AutoTokenizer

            if p.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            else:
                tok = AutoTokenizer.from_pretrained(str(p.parent))
            template = chat_template or getattr(tok, "chat_template", None)
            bos = tok.bos_token_id if bos_id is None else bos_id
            eos = tuple(eos_ids) or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
            if add_bos is None:
                add_bos = bool(getattr(tok, "add_bos_token", False))
            return Tokenizer(_HF(tok), template, bos, eos, "transformers (fallback)", add_bos)
        import pytorch_tokenizers

        tok = pytorch_tokenizers.get_tokenizer(str(p))
        is_tiktoken = type(tok).__name__.lower().startswith(("tiktoken", "cpptiktoken"))
        template = chat_template or (LLAMA3_TEMPLATE if is_tiktoken else LLAMA2_TEMPLATE)
        eos = tuple(eos_ids) or (tok.eos_id,)
        if is_tiktoken and not eos_ids:
            eot = tok.encode("<|eot_id|>", bos=False, eos=False, allowed_special="all") \
                if "allowed_special" in tok.encode.__code__.co_varnames else []
            eos = tuple(dict.fromkeys((tok.eos_id, *eot)))
        return Tokenizer(_PT(tok), template, tok.bos_id if bos_id is None else bos_id,
                         eos, "pytorch_tokenizers (fallback)", True if add_bos is None else add_bos)
    except TokenizerError:
        raise
    except Exception as e:
        raise TokenizerError(f"cannot load tokenizer {p}: {type(e).__name__}: {e}") from e
