"""What every route shares: the server's settings, OpenAI's error object,
the API key, the body-size limit, and the state routes read.

Every refusal is a 4xx with OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`; a bug in a request's
generation is a 500 with the same shape (or an error event mid-stream),
and the server keeps serving either way.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import schema
from server.engine import Engine
from torchchat.tokenizer import ChatTemplate

if TYPE_CHECKING:
    from server.metrics import Metrics

log = logging.getLogger("torchchat.server")


@dataclass
class Config:
    model_id: str
    max_seq_length: int
    vocab_size: int
    max_tokens_cap: int
    default_max_tokens: int = 200
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    # Request defaults for fields a request leaves out (the CLI's flags).
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    system_prompt: str | None = None
    pooling: str = "mean"  # /v1/embeddings: mean, last or cls
    # Image parts: whether http(s) URLs are fetched, how many a request may
    # hold, and how many bytes each.
    allow_image_urls: bool = False
    max_images: int = 4
    max_image_bytes: int = 20 << 20
    info: dict[str, Any] = field(default_factory=dict)
    # --speculate's settings for /props (server/schema.SpeculativeSettings's
    # fields), None when the server does not speculate.
    speculative: dict[str, Any] | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    quiet: bool = True

    @property
    def fingerprint(self) -> str:
        # Names the loaded weights and settings: the same server answers alike.
        digest = json.dumps([self.model_id, self.info], sort_keys=True, default=str)
        return "fp_" + uuid.uuid5(uuid.NAMESPACE_URL, digest).hex[:12]


@dataclass
class Served:
    """What the routes read: the engine, the settings, the chat template
    (compiled once) and the metrics."""

    engine: Engine
    config: Config
    template: ChatTemplate | None
    metrics: Metrics


def served(request: Request) -> Served:
    return request.app.state.served


# A route's parameter of this type gets the app's Served.
Server = Annotated[Served, Depends(served)]


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )

    def model(self) -> schema.ErrorResponse:
        return schema.ErrorResponse(
            error=schema.ErrorBody(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.model().model_dump(), status_code=self.status, headers=headers)


def check_model(config: Config, name: str) -> None:
    if name != config.model_id:
        raise APIError(
            404,
            f"model {name!r} does not exist; this server serves {config.model_id!r}",
            param="model",
            code="model_not_found",
        )


# --- errors ------------------------------------------------------------------------

_UNION_TAGS = {"system", "developer", "user", "assistant", "tool", "str", "int"}


def _loc(loc: Sequence[str | int]) -> str:
    """pydantic's error location as OpenAI's `param` ("messages[0].role")."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in _UNION_TAGS or not str(part).isidentifier():
            continue  # union members pydantic names (a role tag, "list[int]", ...)
        else:
            out += ("." if out else "") + str(part)
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    # Prefer the error on the deepest path: a union's branches all fail, and
    # the one that got furthest says what was actually wrong.
    e = max(errors, key=lambda e: len(e.get("loc", ())))
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}", None
    param = _loc(e.get("loc", ())) or None
    msg = e.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return (f"{param}: {msg}" if param else msg), param


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return APIError(400, message, param=param).response()


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    return APIError(exc.status_code, message, code=code).response()


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours, pydantic's, routing's or a bug, as OpenAI's object."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)


# --- the API key ---------------------------------------------------------------------


# llama-server's routes that read the model or its use; like its own, they
# need the key when there is one.
KEYED = frozenset({"/tokenize", "/detokenize", "/props", "/metrics"})


async def require_key(request: Request, call_next: Any) -> Any:
    """With --api-key, /v1/ routes and KEYED need `Authorization: Bearer KEY`;
    the page and /health do not."""
    key = served(request).config.api_key
    path = request.url.path
    if key and (path.startswith("/v1/") or path in KEYED):
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {key}".encode()):
            return APIError(
                401,
                "missing or incorrect API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            ).response({"WWW-Authenticate": "Bearer"})
    return await call_next(request)


# --- the body limit ------------------------------------------------------------------


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413, whether it says
    so in Content-Length or only sends that much. The body is read here in
    full (it is at most `limit`) and handed on as one message."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = APIError(
            413,
            f"request body is larger than this server's limit of {self.limit} bytes",
            code="request_too_large",
        ).model()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body.model_dump_json().encode()})
