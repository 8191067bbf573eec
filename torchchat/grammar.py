"""Structured output: generation held to a grammar (a JSON Schema, Lark or
llama.cpp's GBNF) by masking the logits, through llguidance.

llguidance compiles the grammar and, each step, computes which tokens may
come next as a bitmask over the vocabulary; `Guided` wraps any `Pick` (the
one sampler contract of torchchat/generate.py) so that disallowed tokens get
-inf before the sampler draws, and end-of-sequence only where the grammar is
complete. The sampler then draws from the distribution restricted to what
the grammar allows, so even a model with random weights writes text the
grammar accepts (a JSON Schema's output validates against it).

The mask for step t+1 depends only on the tokens up to t, so `Guided` starts
computing it in a worker thread as soon as it has picked token t, and
decode() runs the model's forward for step t+1 meanwhile (llguidance drops
the GIL while it computes, and torch's kernels do too); the next pick only
waits for whatever is left. Why llguidance and not xgrammar, and what it
costs per token: server/README.md, "Structured outputs".
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
import torch

if TYPE_CHECKING:
    from torchchat.generate import Pick
    from torchchat.tokenizer import Tokenizer

# JSON written without optional whitespace (json.dumps(separators=(",", ":"))):
# a model, a weak one most of all, cannot then spin on spaces and newlines.
# schema() spells the same options out, where llguidance's typed signature
# reads them.
COMPACT = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A grammar or schema the engine refuses; the message is its reason."""


def _checked(grammar: str) -> str:
    err = llguidance.LLMatcher.validate_grammar(grammar)
    if err:
        raise GrammarError(_one_line(err))
    return grammar


def _one_line(message: str) -> str:
    # Lark errors point at the spot over several lines; the first names it.
    return message.strip().splitlines()[0] if message.strip() else "invalid grammar"


def json_schema(schema: Any) -> str:
    """The grammar of JSON that validates against `schema` (a dict, or its
    JSON text). Raises GrammarError naming what the engine does not take
    (a keyword it does not implement, a $ref that points nowhere, ...)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the schema is not JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise GrammarError("a JSON Schema must be an object")
    try:
        # A boolean schema (true/false) goes as its JSON text.
        text_or_dict = schema if isinstance(schema, dict) else json.dumps(schema)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            text_or_dict, defaults={"whitespace_flexible": False}
        )
    except ValueError as e:
        raise GrammarError(_one_line(str(e))) from None
    return _checked(grammar)


def json_object() -> str:
    """Any JSON object (OpenAI's JSON mode)."""
    return json_schema({"type": "object"})


def lark(text: str) -> str:
    """A Lark grammar (llguidance's dialect, `%json {schema}` included) or
    llama.cpp's GBNF, which llguidance converts to Lark."""
    try:
        converted = llguidance.grammar_from("gbnf", text)
    except ValueError as e:
        raise GrammarError(_one_line(str(e))) from None
    return _checked(converted)


def from_file(path: str | os.PathLike[str], kind: str) -> str:
    """`kind` "json-schema" or "grammar" (Lark or GBNF), read from `path`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise GrammarError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        return json_schema(text) if kind == "json-schema" else lark(text)
    except GrammarError as e:
        raise GrammarError(f"{p}: {e}") from None


# --- the tokenizer's table ----------------------------------------------------------

_tables: dict[tuple[int, int], tuple[Tokenizer, llguidance.LLTokenizer]] = {}
_tables_lock = threading.Lock()


class _Table:
    """What llguidance's TokenizerWrapper reads from a tokenizer."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int):
        pieces, special = tokenizer.vocab_bytes()
        self.eos_token_id = tokenizer.eos_ids[0] if tokenizer.eos_ids else None
        self.bos_token_id = tokenizer.bos_id
        # llguidance's convention: a special token's bytes start with 0xFF,
        # which no UTF-8 text contains, so no grammar can match it as text.
        # Ids past the tokenizer's (a model's padded vocabulary) are such too.
        self.tokens = [b"\xff" + p if i in special else p for i, p in enumerate(pieces)]
        self.tokens += [b"\xff[unused%d]" % i for i in range(len(pieces), n_vocab)]
        self.special_token_ids = sorted(special | set(range(len(pieces), n_vocab)))
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, special=False)


def table(tokenizer: Tokenizer, n_vocab: int) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` over a model's `n_vocab` logits; built
    once (about a second for a 128K vocabulary) and kept."""
    key = (id(tokenizer), n_vocab)
    with _tables_lock:
        hit = _tables.get(key)
        if hit is None:
            wrapped = llguidance.TokenizerWrapper(_Table(tokenizer, n_vocab))
            eos = list(tokenizer.eos_ids) or None
            hit = _tables[key] = (
                tokenizer,
                llguidance.LLTokenizer(wrapped, n_vocab=n_vocab, eos_token=eos),
            )
        return hit[1]


def warm(tokenizer: Tokenizer, n_vocab: int) -> None:
    """Builds table() in the background (a server at start), so that the
    first structured request does not wait for it. A failure here shows
    again, reported, at that request."""

    def build() -> None:
        try:
            table(tokenizer, n_vocab)
        except Exception:  # noqa: BLE001 (reported by the request that needs it)
            pass

    threading.Thread(target=build, name="grammar-table", daemon=True).start()


# --- the mask in the sampler ---------------------------------------------------------

# Masks are computed here, beside the forward. A few workers: the slots of a
# batched server each fill their own mask during the same forward.
_POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="grammar")


class Guided:
    """A Pick held to `grammar`: the wrapped pick sees logits with every
    token the grammar does not allow next at -inf.

    With `n_vocab` (the model's logits, which may outnumber the tokenizer's
    ids) the first mask is computed at once, during the prefill; without,
    at the first pick, from the logits' size. One Guided serves one
    generation.
    """

    # False computes each mask at the pick, after the forward: only
    # //server:structured_bench turns it off, to measure what overlap saves.
    overlap = True

    def __init__(self, grammar: str, tokenizer: Tokenizer, pick: Pick, n_vocab: int | None = None):
        self.grammar, self.tokenizer, self.pick = grammar, tokenizer, pick
        self._next: Future | None = None
        self._stale = False  # the mask awaits a fill at the next pick
        self.n_vocab = 0
        if n_vocab is not None:
            self._start(n_vocab)

    def _start(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.matcher = llguidance.LLMatcher(
            table(self.tokenizer, n_vocab), self.grammar, log_level=0
        )
        if self.matcher.is_error():
            raise GrammarError(_one_line(self.matcher.get_error()))
        self.bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._next = _POOL.submit(self._fill)

    def _fill(self) -> None:
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)

    def allowed(self) -> torch.Tensor:
        """The next step's mask (bool, [n_vocab]), waiting for it if needed."""
        if self._next is not None:
            self._next.result()
            self._next = None
        if self._stale:
            self._fill()
            self._stale = False
        bits = np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.n_vocab]
        return torch.from_numpy(bits.astype(bool))

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        if not self.n_vocab:
            self._start(logits.numel())
        allowed = self.allowed()
        if self.matcher.is_error() or not bool(allowed.any()):
            raise RuntimeError(f"grammar: no token can continue: {self.matcher.get_error()}")
        flat = logits.reshape(-1).float()
        masked = flat.masked_fill(~allowed[: flat.numel()], float("-inf"))
        tok = int(self.pick(masked, history))
        if not self.matcher.consume_token(tok):
            raise RuntimeError(f"grammar: token {tok} was refused: {self.matcher.get_error()}")
        # Step t+1's mask, while the caller runs the forward for it.
        if self.overlap:
            self._next = _POOL.submit(self._fill)
        else:
            self._stale = True
        return tok
