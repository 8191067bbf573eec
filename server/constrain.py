"""Constrained decoding, for a forced tool call (tool_choice "required" or a
named function).

A grammar for the call (the tool-call tag, one of the allowed names, and
arguments that follow that tool's JSON Schema) is matched character by
character; each step, only tokens whose text keeps the output inside the
grammar may be sampled, and end-of-turn only once the call is complete. So
any model, however small, answers a forced call with one that parses.

The sampler first draws from the unmasked logits and keeps the token if it
fits (the common case inside a string); only otherwise is the full mask
computed and the draw repeated over the allowed tokens. Both ways the token
comes from the distribution restricted to allowed tokens (rejection
sampling), and greedy picks the best allowed token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any

import torch

# Grammar nodes are tuples, so that parser states are hashable and each
# (state, character) step can be cached.
Node = tuple[Any, ...]
Stack = tuple[Node, ...]  # what is left to match; the top is last
State = frozenset[Stack]  # every way the text so far can continue

EMPTY: Node = ("seq", ())
STRING: Node = ("string", None)  # the maximum length, if any
NUMBER: Node = ("number", False)
INTEGER: Node = ("number", True)
ANY: Node = ("any",)


def lit(s: str) -> Node:
    return ("lit", s)


def seq(*nodes: Node) -> Node:
    return ("seq", tuple(nodes))


def alt(*nodes: Node) -> Node:
    return ("alt", tuple(nodes))


def opt(node: Node) -> Node:
    return alt(EMPTY, node)


def star(node: Node) -> Node:
    return ("star", node)


def _json_list(item: Node) -> Node:
    return seq(lit("["), opt(seq(item, star(seq(lit(", "), item)))), lit("]"))


_MEMBER = seq(STRING, lit(": "), ANY)
# Any JSON value, written compactly with ": " and ", " (no other whitespace,
# so a model cannot spin on spaces).
_ANY_OBJECT = seq(lit("{"), opt(seq(_MEMBER, star(seq(lit(", "), _MEMBER)))), lit("}"))
_ANY_VALUE = alt(
    STRING, NUMBER, lit("true"), lit("false"), lit("null"), _ANY_OBJECT, _json_list(ANY)
)


def from_schema(schema: Any) -> Node:
    """A JSON Schema subset: type (or a list of types), properties and
    required (keys in the schema's order), items, enum, const, anyOf/oneOf,
    a string's maxLength.
    Anything else allows any JSON value of the declared type."""
    if not isinstance(schema, dict):
        return ANY
    if "const" in schema:
        return lit(json.dumps(schema["const"], ensure_ascii=False))
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return alt(*(lit(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]))
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return alt(*(from_schema(s) for s in schema[key]))
    kind = schema.get("type")
    if isinstance(kind, list):
        return alt(*(from_schema(dict(schema, type=k)) for k in kind)) if kind else ANY
    if kind == "string":
        limit = schema.get("maxLength")
        return ("string", limit) if isinstance(limit, int) and limit >= 0 else STRING
    if kind == "integer":
        return INTEGER
    if kind == "number":
        return NUMBER
    if kind == "boolean":
        return alt(lit("true"), lit("false"))
    if kind == "null":
        return lit("null")
    if kind == "array":
        return _json_list(from_schema(schema.get("items")) if "items" in schema else ANY)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return _ANY_OBJECT
        return _object(props, set(schema.get("required") or ()))
    return ANY


def _object(props: dict[str, Any], required: set) -> Node:
    names = list(props)

    # members(i, first): properties i.. in order; `first` when nothing has
    # been written yet (no comma). Optional properties may be left out.
    @cache
    def members(i: int, first: bool) -> Node:
        if i == len(names):
            return EMPTY
        member = seq(
            lit(("" if first else ", ") + json.dumps(names[i], ensure_ascii=False) + ": "),
            from_schema(props[names[i]]),
            members(i + 1, False),
        )
        return member if names[i] in required else alt(member, members(i + 1, first))

    return seq(lit("{"), members(0, True), lit("}"))


def tool_call(tools: Sequence[dict[str, Any]], llama_json: bool = False) -> Node:
    """One call of one of `tools` (OpenAI tool objects), in the format our
    parser reads: Hermes/Qwen `<tool_call>{"name", "arguments"}</tool_call>`,
    or Llama 3.1's bare `{"name", "parameters"}`."""
    args_key = "parameters" if llama_json else "arguments"
    calls = []
    for t in tools:
        fn = t["function"]
        name = json.dumps(fn["name"], ensure_ascii=False)
        params = fn.get("parameters") or {"type": "object"}
        calls.append(seq(lit(f'{name}, "{args_key}": '), from_schema(params)))
    body = seq(lit('{"name": '), alt(*calls), lit("}"))
    return body if llama_json else seq(lit("<tool_call>\n"), body, lit("\n</tool_call>"))


# --- matching ---------------------------------------------------------------------

_HEX = set("0123456789abcdefABCDEF")
_NUMBER_STEPS = {
    # state: [(characters, next state, integers too)]
    "start": [("-", "minus", True), ("0", "zero", True), ("123456789", "int", True)],
    "minus": [("0", "zero", True), ("123456789", "int", True)],
    "zero": [(".", "dot", False), ("eE", "e", False)],
    "int": [("0123456789", "int", True), (".", "dot", False), ("eE", "e", False)],
    "dot": [("0123456789", "frac", False)],
    "frac": [("0123456789", "frac", False), ("eE", "e", False)],
    "e": [("+-", "sign", False), ("0123456789", "exp", False)],
    "sign": [("0123456789", "exp", False)],
    "exp": [("0123456789", "exp", False)],
}
_NUMBER_ENDS = {"zero", "int", "frac", "exp"}


def _expand(stack: Stack) -> Iterator[Stack]:
    """The stacks `stack` can become without reading a character, whose top
    reads one (or that are empty: the grammar is complete)."""
    work, seen = [stack], set()
    while work:
        st = work.pop()
        if st in seen:
            continue
        seen.add(st)
        if not st:
            yield st
            continue
        top, rest = st[-1], st[:-1]
        kind = top[0]
        if kind == "lit":
            if top[1]:
                yield st
            else:
                work.append(rest)
        elif kind == "seq":
            work.append(rest + tuple(reversed(top[1])))
        elif kind == "alt":
            work.extend(rest + (n,) for n in top[1])
        elif kind == "star":
            work.append(rest)
            work.append(rest + (top, top[1]))
        elif kind == "string":
            # (escape state, characters so far, the maximum)
            work.append(rest + (("chars", "n", 0, top[1]), lit('"')))
        elif kind == "chars":
            yield st
        elif kind == "number":
            yield rest + (("num", top[1], "start"),)
        elif kind == "num":
            yield st
            if top[2] in _NUMBER_ENDS:
                work.append(rest)
        elif kind == "any":
            work.append(rest + (_ANY_VALUE,))
        else:
            raise ValueError(f"unknown grammar node {top!r}")


def _read(stack: Stack, ch: str) -> Stack | None:
    """`stack` (top reads a character) after reading `ch`, or None."""
    top, rest = stack[-1], stack[:-1]
    kind = top[0]
    if kind == "lit":
        s = top[1]
        if ch != s[0]:
            return None
        return rest + (lit(s[1:]),) if len(s) > 1 else rest
    if kind == "chars":
        _, mode, n, limit = top
        if mode == "n":
            if ch == '"':
                return rest
            if limit is not None and n >= limit:
                return None
            if ch == "\\":
                return rest + (("chars", "e", n, limit),)
            return rest + (("chars", "n", n + 1, limit),) if ch >= " " else None
        if mode == "e":  # an escape counts as one character
            if ch in '"\\/bfnrt':
                return rest + (("chars", "n", n + 1, limit),)
            return rest + (("chars", 0, n, limit),) if ch == "u" else None
        if ch not in _HEX:
            return None
        return rest + (
            ("chars", "n", n + 1, limit) if mode == 3 else ("chars", mode + 1, n, limit),
        )
    if kind == "num":
        for chars, nxt, integer in _NUMBER_STEPS[top[2]]:
            if ch in chars and (integer or not top[1]):
                return rest + (("num", top[1], nxt),)
        return None
    return None


def start(grammar: Node) -> State:
    return frozenset(_expand((grammar,)))


def step(state: State, ch: str) -> State:
    out = set()
    for st in state:
        if st:
            nxt = _read(st, ch)
            if nxt is not None:
                out.update(_expand(nxt))
    return frozenset(out)


# --- tokens -----------------------------------------------------------------------


class Vocab:
    """Each token's text, and a trie over them, for one tokenizer."""

    def __init__(self, tokenizer: Any, size: int):
        # A token's text as it reads after other text (decoding it alone
        # loses a SentencePiece word's leading space).
        first = tokenizer.encode("a")[-1:]
        anchor = tokenizer.decode(first)
        self.texts: list[str | None] = []
        self.root: list[Any] = [[], {}]  # [ids ending here, children by character]
        skip = set(tokenizer.eos_ids)
        if tokenizer.bos_id is not None:
            skip.add(tokenizer.bos_id)
        for i in range(size):
            text = tokenizer.decode(first + [i])
            text = text[len(anchor) :] if text.startswith(anchor) else None
            # A piece of a UTF-8 character, or no text at all, cannot be
            # matched character by character.
            if i in skip or not text or "\ufffd" in text:
                self.texts.append(None)
                continue
            self.texts.append(text)
            node = self.root
            for ch in text:
                node = node[1].setdefault(ch, [[], {}])
            node[0].append(i)


class Constraint:
    """One generation held to `grammar`: pick() the next token, then
    advance() past the one chosen."""

    def __init__(self, grammar: Node, vocab: Vocab, eos_ids: Sequence[int]):
        self.state = start(grammar)
        self.vocab = vocab
        self.eos = list(eos_ids)
        self._steps: dict[tuple[State, str], State] = {}

    def _step(self, state: State, ch: str) -> State:
        key = (state, ch)
        nxt = self._steps.get(key)
        if nxt is None:
            nxt = self._steps[key] = step(state, ch)
        return nxt

    @property
    def complete(self) -> bool:
        return () in self.state

    def fits(self, tok: int) -> bool:
        if tok in self.eos:
            return self.complete
        text = self.vocab.texts[tok] if tok < len(self.vocab.texts) else None
        if text is None:
            return False
        state = self.state
        for ch in text:
            state = self._step(state, ch)
            if not state:
                return False
        return True

    def allowed(self) -> list[int]:
        out = list(self.eos) if self.complete else []
        work = [(self.vocab.root, self.state)]
        while work:
            node, state = work.pop()
            for ch, child in node[1].items():
                nxt = self._step(state, ch)
                if nxt:
                    out.extend(child[0])
                    work.append((child, nxt))
        return out

    def pick(self, logits: torch.Tensor, sample: Callable[[torch.Tensor], int]) -> int:
        if self.state != frozenset({()}):
            tok = sample(logits)
            if self.fits(tok):
                return tok
        allowed = self.allowed() if self.state != frozenset({()}) else list(self.eos)
        if not allowed:
            raise RuntimeError("no token can continue the constrained output")
        masked = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(allowed)
        masked[idx] = logits[idx]
        return sample(masked)

    def advance(self, tok: int) -> None:
        if tok in self.eos:
            self.state = frozenset()
            return
        for ch in self.vocab.texts[tok] or "":
            self.state = self._step(self.state, ch)
