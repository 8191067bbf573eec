"""OpenAI's request and response bodies as pydantic models.

Requests are validated here (types, ranges, roles, tool schemas); a body
that fails becomes a 400 with OpenAI's error object (common.py). Fields
OpenAI documents that this server cannot honour are refused by name
(UNSUPPORTED) rather than silently ignored; a few that change nothing
here (user, metadata, store, ...) are accepted and ignored, as other
OpenAI-compatible servers do.

Every JSON body the server sends is one of the response models below:
whole responses, each streamed chunk, and every error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_serializer,
    model_validator,
)

# OpenAI caps stop sequences at 4; a local server can afford a few more.
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


def _ids(p: Sequence[object]) -> TypeGuard[Sequence[int]]:
    """Whether a prompt/input list is one tokenized prompt (ids) rather than
    several prompts."""
    return all(isinstance(x, int) for x in p)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    # Request bodies: fields we do not know are ignored (clients send
    # vendor extensions), except the ones UNSUPPORTED names.
    model_config = ConfigDict(extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class ImageURL(_Strict):
    # A data: URL (base64), or http(s) where the server allows it.
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


# A user's content may hold images; other roles' text only, as OpenAI's.
UserContent = str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]


def _text(content: str | Sequence[TextPart | ImagePart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


def _template_content(
    content: str | Sequence[TextPart | ImagePart] | None,
) -> str | list[dict[str, str]]:
    """Text as a string; with images, parts as chat templates take them
    ({"type": "image"} where each image goes), in the request's order."""
    if isinstance(content, list) and any(isinstance(p, ImagePart) for p in content):
        return [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
            for p in content
        ]
    return _text(content)


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCallIn(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


# Tagged by role, so an unknown role is one clear error.
Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema_object(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "object") != "object":
            raise ValueError("function parameters must be a JSON Schema of type 'object'")
        if v is not None and not isinstance(v.get("properties", {}), dict):
            raise ValueError("function parameters' 'properties' must be an object")
        return v


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # `schema` would shadow BaseModel's method.
    schema_: dict[str, Any] | bool = Field(default=True, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's response_format: plain text, any JSON object (JSON mode), or
    JSON that validates against a schema (structured outputs)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _checks(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs json_schema: {name, schema}")
        return self


class StreamOptions(_Open):
    include_usage: bool = False


# Fields that would change the output in ways this server does not implement.
UNSUPPORTED = {
    "logit_bias": "logit_bias is not supported",
    "functions": "functions is deprecated and not supported; use tools",
    "function_call": "function_call is deprecated and not supported; use tool_choice",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "suffix": "suffix (insertion) is not supported",
}


def unsupported(extra: dict[str, Any] | None) -> tuple[str, str] | None:
    """(field, why) for the first field set that this server refuses."""
    for name, value in (extra or {}).items():
        if name in UNSUPPORTED and value not in (None, {}, []):
            return name, UNSUPPORTED[name]
    return None


class SamplingRequest(_Open):
    """What chat and completions requests share."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # llama-server's extensions
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    # llama-server's and vLLM's: generate max_tokens even past end-of-sequence
    # (benchmarks use it to fix the workload).
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice in ("none", "auto", None):
            return self
        names = [t.function.name for t in self.tools or ()]
        if not names:
            raise ValueError("tool_choice: forcing a tool call needs tools")
        if (
            isinstance(self.tool_choice, NamedToolChoice)
            and self.tool_choice.function.name not in names
        ):
            raise ValueError(
                f"tool_choice: function {self.tool_choice.function.name!r} is not among the tools"
            )
        return self

    def forced_tools(self) -> list[Tool]:
        """The tools one of which must be called (tool_choice "required" or
        a named function), else []."""
        if isinstance(self.tool_choice, NamedToolChoice):
            want = self.tool_choice.function.name
            return [t for t in self.tools or () if t.function.name == want]
        return list(self.tools or ()) if self.tool_choice == "required" else []

    def image_parts(self) -> list[tuple[str, str]]:
        """(where, url) of each image part, in the order the template
        places them; `where` names the part as a 400 does."""
        return [
            (f"messages[{i}].content[{j}]", p.image_url.url)
            for i, m in enumerate(self.messages)
            if isinstance(m, UserMessage) and isinstance(m.content, list)
            for j, p in enumerate(m.content)
            if isinstance(p, ImagePart)
        ]

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates expect them (text content, arguments as objects)."""
        import json

        out: list[dict[str, Any]] = []
        for m in self.messages:
            d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
            d["content"] = _template_content(m.content)
            if isinstance(m, AssistantMessage) and m.tool_calls:
                calls = []
                for c in m.tool_calls:
                    try:
                        args: Any = json.loads(c.function.arguments)
                    except ValueError:
                        args = c.function.arguments
                    calls.append(
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": args},
                        }
                    )
                d["tool_calls"] = calls
            if isinstance(m, ToolMessage):
                d["tool_call_id"] = m.tool_call_id
            name = getattr(m, "name", None)
            if name:
                d["name"] = name
            out.append(d)
        return out


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's completions default is 16 tokens.
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list")
        return self

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if _ids(p):
            return [list(p)]
        return [x if isinstance(x, str) else list(x) for x in p if not isinstance(x, int)]


# --- responses -------------------------------------------------------------------


class TopLogprob(_Strict):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Strict):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(_Strict):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class ToolCallOut(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(_Strict):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    annotations: list[dict[str, Any]] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_no_calls(self, handler: Any) -> dict[str, Any]:
        # OpenAI leaves tool_calls out when there are none; its schema has
        # no null there.
        out = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return out


class PromptTokensDetails(_Strict):
    cached_tokens: int = 0


class SpeculativeUsage(_Strict):
    # Ids the drafter guessed and the model verified, and how many of them
    # it kept (llama-server's timings call them draft_n, draft_n_accepted).
    draft_tokens: int = 0
    accepted_tokens: int = 0


class Usage(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    # torchchat's extension, from a server started with --speculate only.
    speculative: SpeculativeUsage | None = None

    @model_serializer(mode="wrap")
    def _omit_no_speculation(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("speculative") is None:
            out.pop("speculative", None)
        return out


class ChatChoice(_Strict):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(_Strict):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(_Strict):
    # Calls are parsed once the reply is complete, so each is sent whole.
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatDelta(_Strict):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _only_what_changed(self, handler: Any) -> dict[str, Any]:
        # A delta carries only the fields it adds (OpenAI sends no nulls in
        # it; the last one is {}).
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(_Strict):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Strict):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    # With stream_options.include_usage: null on every chunk but the last;
    # without it, absent (see sse()).
    usage: Usage | None = None


class CompletionChoice(_Strict):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Strict):
    """A completion, and each streamed chunk of one (OpenAI streams the same
    object, a piece of text per choice)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


def sse(chunk: ChatCompletionChunk | Completion, include_usage: bool) -> str:
    """One streamed chunk as an SSE event's data."""
    return chunk.model_dump_json(exclude=None if include_usage else {"usage"})


class ModelCard(_Strict):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "torchchat"
    # llama-server reports these too; clients size their prompts by them.
    max_model_len: int | None = None


class ModelList(_Strict):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Strict):
    status: Literal["ok"] = "ok"
    model: str
    slots: int
    slots_busy: int
    queued: int


# --- embeddings ------------------------------------------------------------------

# OpenAI's limit on inputs per request.
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Open):
    model: str
    # A string, strings, token ids, or lists of token ids (OpenAI's four).
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input is an empty list")
        if isinstance(v, list) and len(v) > MAX_EMBEDDING_INPUTS and not isinstance(v[0], int):
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return v

    def inputs(self) -> list[str | list[int]]:
        x = self.input
        if isinstance(x, str):
            return [x]
        if _ids(x):
            return [list(x)]
        return [i if isinstance(i, str) else list(i) for i in x if not isinstance(i, int)]


class Embedding(_Strict):
    object: Literal["embedding"] = "embedding"
    index: int
    # base64: the little-endian float32 bytes, as OpenAI sends them.
    embedding: list[float] | str


class EmbeddingUsage(_Strict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Strict):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- llama-server's own endpoints (tools/server/README.md there) ------------------


class TokenizeRequest(_Open):
    content: StrictStr
    add_special: StrictBool = False  # bos, where the model's prompts start with it
    parse_special: StrictBool = True  # special-token text becomes its id
    with_pieces: StrictBool = False


class TokenPiece(_Strict):
    id: int
    # The token's text, or its bytes where they are not whole UTF-8.
    piece: str | list[int]


class TokenizeResponse(_Strict):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(_Open):
    tokens: list[StrictInt]


class DetokenizeResponse(_Strict):
    content: str


class GenerationParams(_Strict):
    """The defaults a request's fields fall back to, under llama-server's
    names (the ones that apply here)."""

    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_last_n: int
    repeat_penalty: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int
    n_predict: int
    ignore_eos: bool = False
    stream: bool = False
    n_probs: int = 0
    # llama-server's draft length bounds; 0 and 0 when the server does not
    # speculate.
    speculative_n_max: int = Field(serialization_alias="speculative.n_max")
    speculative_n_min: int = Field(serialization_alias="speculative.n_min")


class SpeculativeSettings(_Strict):
    """--speculate as the server runs it (torchchat's own field: llama-server
    has only the n_max/n_min above)."""

    mode: str  # "prompt-lookup" or "draft"
    draft_model: str | None  # --draft as given
    draft_k: int | str  # ids per draft, or "auto"
    ngram_max: int | None  # prompt lookup's longest n-gram


class GenerationSettings(_Strict):
    n_ctx: int
    params: GenerationParams


class Modalities(_Strict):
    vision: bool = False
    audio: bool = False


class Props(_Strict):
    default_generation_settings: GenerationSettings
    total_slots: int
    model_alias: str
    model_path: str
    modalities: Modalities = Field(default_factory=Modalities)
    endpoint_slots: bool = False
    endpoint_props: bool = False  # POST /props
    endpoint_metrics: bool = True
    speculative: SpeculativeSettings | None = None
    webui: bool = True
    chat_template: str
    bos_token: str
    eos_token: str
    build_info: str


class ErrorBody(_Strict):
    # Always all four keys, param and code null when they do not apply.
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Strict):
    error: ErrorBody
