"""Tool calls parsed out of generated text, in the formats our templates ask
models to use:

- Qwen 2.5 / Hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  any number of them, with ordinary text around them;
- Llama 3.1 JSON: the whole reply is `{"name": ..., "parameters": {...}}`
  (optionally after `<|python_tag|>`), several separated by `;`.

A forced call (tool_choice "required" or a named function) is generated
under `forced_grammar`, llguidance's Lark with each tool's JSON Schema.

Streaming holds back text that may turn out to be a tool call (from a
`<tool_call>` tag on, or a whole reply that starts like Llama's JSON) and
decides at the end whether it was one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torchchat import grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_TAGGED = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "call_" + uuid.uuid4().hex[:24]


def _call_from(obj: Any, names: Iterable[str] | None) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments pre-encoded
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    if names is not None and obj["name"] not in set(names):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def parse(text: str, names: Sequence[str] | None = None) -> tuple[str, list[ToolCall]]:
    """(content without the calls, calls). A tagged call names any function;
    bare Llama JSON counts only when it names one of `names` (an ordinary
    JSON answer must stay an answer)."""
    if OPEN in text:
        calls = []
        for m in _TAGGED.finditer(text):
            try:
                call = _call_from(json.loads(m.group(1)), None)
            except ValueError:
                call = None
            if call is None:
                return text, []  # a malformed block: the text is the answer
            calls.append(call)
        content = _TAGGED.sub("", text).strip()
        return content, calls
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :].strip()
    if not body.startswith("{"):
        return text, []
    try:
        parts = [json.loads(p) for p in _split_json_objects(body)]
    except ValueError:
        return text, []
    found = [_call_from(p, names) for p in parts]
    if not found or any(c is None for c in found):
        return text, []
    return "", [c for c in found if c is not None]


def _split_json_objects(body: str) -> list[str]:
    """`{...}; {...}` into its objects (Llama 3.1 separates parallel calls with ';')."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(body):
        _, end = dec.raw_decode(body, i)
        out.append(body[i:end])
        i = end
        while i < len(body) and body[i] in " \n\t;":
            i += 1
    return out


_DATA = {"const", "enum", "default", "examples"}


def closed(schema: Any) -> Any:
    """`schema` with every object that lists `properties` but says nothing
    of others closed to them (`additionalProperties: false`), as OpenAI's
    strict function calling requires: a forced call writes the arguments
    the tool declares, never a made-up key."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    # Values (const, enum, ...) are data, not schemas.
    out = {k: v if k in _DATA else closed(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def forced_grammar(tools: Sequence[dict[str, Any]], llama_json: bool = False) -> str:
    """The grammar of one call of one of `tools` (OpenAI tool objects) in the
    format parse() reads: Hermes/Qwen `<tool_call>{"name", "arguments"}</tool_call>`,
    or Llama 3.1's bare `{"name", "parameters"}`; the arguments follow the
    tool's `parameters` schema, closed to undeclared keys. Raises grammar.GrammarError for a schema the
    engine does not take."""
    key = "parameters" if llama_json else "arguments"
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                key: closed(t["function"].get("parameters") or {"type": "object"}),
            },
            "required": ["name", key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = {"anyOf": calls, "x-guidance": grammar.COMPACT}
    body = "%json " + json.dumps(schema, ensure_ascii=False)
    if llama_json:
        return grammar.lark("start: " + body)
    head, tail = json.dumps(OPEN + "\n"), json.dumps("\n" + CLOSE)
    return grammar.lark(f"start: {head} call {tail}\ncall: {body}")


class ToolStream:
    """Splits streamed text into what is safe to send now and what is held
    until the end may show it was a tool call."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.text = ""
        self.sent = 0
        self._capturing = False

    def push(self, piece: str) -> str:
        self.text += piece
        if self._capturing:
            return ""
        head = self.text.lstrip()
        if not head or (len(head) < len(PYTHON_TAG) and PYTHON_TAG.startswith(head)):
            return ""  # too early to tell
        if head.startswith(("{", PYTHON_TAG)):
            self._capturing = True  # maybe Llama JSON: decided at the end
            return ""
        i = self.text.find(OPEN, self.sent)
        if i >= 0:
            self._capturing = True
            return self._release(i)
        keep = 0
        for n in range(min(len(OPEN) - 1, len(self.text) - self.sent), 0, -1):
            if self.text.endswith(OPEN[:n]):
                keep = n
                break
        return self._release(len(self.text) - keep)

    def _release(self, upto: int) -> str:
        out = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not yet sent, calls)."""
        content, calls = parse(self.text, self.names)
        if not calls:
            return self._release(len(self.text)), []
        sent = self.text[: self.sent]
        rest = content[len(sent) :] if content.startswith(sent) else ""
        self.sent = len(self.text)
        return rest, calls
