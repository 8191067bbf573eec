"""The HTTP API: OpenAI's routes over an Engine, its errors, auth and limits.

Every refusal is a 4xx with OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`; a bug in a request's
generation is a 500 with the same shape (or an error event mid-stream),
and the server keeps serving either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import constrain, schema, tools
from server.engine import Delta, Done, Engine, Failed, Params, QueueFull, TokenLogprob
from torchchat.tokenizer import TokenizerError

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
    info: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    quiet: bool = True

    @property
    def fingerprint(self) -> str:
        # Names the loaded weights and settings: the same server answers alike.
        digest = json.dumps([self.model_id, self.info], sort_keys=True, default=str)
        return "fp_" + uuid.uuid5(uuid.NAMESPACE_URL, digest).hex[:12]


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

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _error_json(status: int, message: str, type_: str, code: str | None) -> bytes:
    return json.dumps(APIError(status, message, type_, None, code).body()).encode()


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
        body = _error_json(
            413,
            f"request body is larger than this server's limit of {self.limit} bytes",
            "invalid_request_error",
            "request_too_large",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; this holds it to that even if a
# reply ever slipped markup past the renderer.
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The chat page's files (server/static), read once: name -> (body, type)."""
    out = {}
    for name in sorted(os.listdir(STATIC_DIR)):
        ext = os.path.splitext(name)[1]
        if ext in _STATIC_TYPES:
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                out[name] = (f.read(), _STATIC_TYPES[ext])
    if "index.html" not in out:
        raise RuntimeError(f"the chat page is missing from {STATIC_DIR}")
    return out


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


def create_app(engine: Engine, config: Config) -> ASGIApp:
    """The API as an ASGI app (FastAPI inside the body-size limit)."""
    app = FastAPI(title="torchchat", docs_url=None, redoc_url=None, openapi_url=None)
    tok = engine.tokenizer
    template = tok.template()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if config.api_key and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            want = f"Bearer {config.api_key}"
            if not secrets.compare_digest(got.encode(), want.encode()):
                return APIError(
                    401,
                    "missing or incorrect API key (send Authorization: Bearer <key>)",
                    code="invalid_api_key",
                ).response({"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def check_model(name: str) -> None:
        if name != config.model_id:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server serves {config.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def card() -> schema.ModelCard:
        return schema.ModelCard(
            id=config.model_id, created=config.created, max_model_len=config.max_seq_length
        )

    static = _static_files()

    def static_response(name: str) -> Response:
        body, media_type = static[name]
        return Response(
            body,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _PAGE_CSP},
        )

    # The chat page. No API key needed to load it; its requests to /v1/ send
    # the key the user types into it.
    @app.get("/")
    async def page() -> Response:
        return static_response("index.html")

    @app.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in static:
            raise StarletteHTTPException(404)
        return static_response(name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": config.model_id,
            "slots": engine.n_slots,
            "slots_busy": engine.busy(),
            "queued": engine.queued(),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return schema.ModelList(data=[card()]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return card().model_dump()

    def check_request(req: schema._Sampling) -> None:
        check_model(req.model)
        refused = schema.unsupported(req.model_extra)
        if refused:
            raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")

    def params(req: schema._Sampling, max_tokens: int | None, choice: int) -> Params:
        if max_tokens is not None and max_tokens > config.max_tokens_cap:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, above this server's cap of {config.max_tokens_cap}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        seed = req.seed if req.seed is not None else config.seed
        p = Params(
            max_tokens=min(max_tokens or config.default_max_tokens, config.max_tokens_cap),
            temperature=config.temperature if req.temperature is None else req.temperature,
            top_p=config.top_p if req.top_p is None else req.top_p,
            top_k=req.top_k or config.top_k,
            min_p=req.min_p or config.min_p,
            repetition_penalty=(
                req.repetition_penalty
                if req.repetition_penalty != 1.0
                else config.repetition_penalty
            ),
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            # Choices of one seeded request differ from each other, and each
            # is reproducible on its own.
            seed=None if seed is None else (seed + choice) % (1 << 64),
            stop=req.stops(),
            ignore_eos=req.ignore_eos,
        )
        try:
            p.sampler()
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return p

    def check_context(ids: Sequence[int], param: str) -> None:
        if len(ids) >= config.max_seq_length:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, but this model's context holds "
                f"{config.max_seq_length} (and needs room for at least one more)",
                param=param,
                code="context_length_exceeded",
            )

    def check_n(n: int, jobs: int) -> None:
        if jobs > engine.n_slots:
            raise APIError(
                400,
                f"n is {n}: this server runs at most {engine.n_slots} generations per "
                "request (--parallel)",
                param="n",
                code="n_too_large",
            )

    def admit(jobs: int) -> None:
        try:
            engine.admit(jobs)
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None

    def make_usage(prompt_tokens: int, done: list[Done]) -> schema.Usage:
        completion = sum(d.completion_tokens for d in done)
        return schema.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=schema.PromptTokensDetails(
                cached_tokens=min((d.cached_tokens for d in done), default=0)
            ),
        )

    def report(done: Done) -> None:
        if not config.quiet:
            log.info("%s", done.stats.summary())

    def token_text(i: int) -> str:
        return tok.token_text(i)

    def chat_logprobs(items: list[TokenLogprob]) -> schema.ChatLogprobs:
        def top(i: int, lp: float) -> schema.TopLogprob:
            t = token_text(i)
            return schema.TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8")))

        return schema.ChatLogprobs(
            content=[
                schema.ChatTokenLogprob(
                    token=token_text(x.id),
                    logprob=x.logprob,
                    bytes=list(token_text(x.id).encode("utf-8")),
                    top_logprobs=[top(i, lp) for i, lp in x.top],
                )
                for x in items
            ]
        )

    async def events(
        jobs: list[tuple[list[int], Params]],
    ) -> AsyncIterator[tuple[int, Delta | Done | Failed]]:
        """Every job's events as they come, (job index, event); cancels the
        jobs if the consumer stops early."""
        sink: asyncio.Queue = asyncio.Queue()
        tasks = [engine.start(ids, p, sink, i) for i, (ids, p) in enumerate(jobs)]
        left = len(jobs)
        try:
            while left:
                i, ev = await sink.get()
                if isinstance(ev, (Done, Failed)):
                    left -= 1
                yield i, ev
        finally:
            for t in tasks:
                t.cancel()

    def failed(ev: Failed) -> APIError:
        return APIError(500, ev.message, "server_error", code="generation_failed")

    async def collect(
        jobs: list[tuple[list[int], Params]], prefixes: list[str]
    ) -> tuple[list[str], list[list[TokenLogprob]], list[Done | None]]:
        """A non-streamed answer: each job's text after its prefix, its
        logprobs and how it ended."""
        texts = list(prefixes)
        lps: list[list[TokenLogprob]] = [[] for _ in jobs]
        done: list[Done | None] = [None] * len(jobs)
        async for i, ev in events(jobs):
            if isinstance(ev, Failed):
                raise failed(ev)
            if isinstance(ev, Delta):
                texts[i] += ev.text
                lps[i] += ev.logprobs
            else:
                done[i] = ev
                report(ev)
        return texts, lps, done

    # --- chat -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(req: schema.ChatCompletionRequest) -> Any:
        check_request(req)
        if template is None:
            raise APIError(
                400, "this model has no chat template; use /v1/completions", code="no_template"
            )
        messages = req.template_messages()
        if config.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        use_tools = bool(req.tools) and req.tool_choice != "none"
        tool_defs = [t.model_dump(exclude_none=True) for t in req.tools] if use_tools else None
        names = [t.function.name for t in req.tools] if use_tools and req.tools else []
        try:
            # The template writes any bos itself, as in `generate --chat-template`.
            ids = tok.encode(
                template.render(messages, add_generation_prompt=True, tools=tool_defs), bos=False
            )
        except TokenizerError as e:
            raise APIError(400, str(e), param="messages", code="template_error") from None
        check_context(ids, "messages")
        check_n(req.n, req.n)
        max_tokens = req.max_completion_tokens or req.max_tokens
        forced = req.forced_tools()
        grammar = None
        if forced:
            # Llama 3.1's templates ask for bare JSON; every other template
            # gets the tagged form, which our parser reads unambiguously.
            llama_json = "<|python_tag|>" in (tok.chat_template or "")
            grammar = constrain.tool_call(
                [t.model_dump(exclude_none=True) for t in forced], llama_json
            )
        jobs = []
        for j in range(req.n):
            p = params(req, max_tokens, j)
            p.logprobs, p.top_logprobs = req.logprobs, req.top_logprobs or 0
            p.grammar = grammar
            jobs.append((ids, p))
        admit(len(jobs))
        rid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(
                _chat_stream(rid, created, ids, jobs, names, include_usage), sep="\n"
            )
        texts, lps, done = await collect(jobs, [""] * len(jobs))
        choices = []
        for i, text in enumerate(texts):
            d = done[i]
            assert d is not None
            content: str | None = text
            calls: list[tools.ToolCall] = []
            if use_tools:
                content, calls = tools.parse(text, names)
            finish = "tool_calls" if calls else d.finish_reason
            msg = schema.ChatMessageOut(
                content=(content or None) if calls else content,
                tool_calls=[
                    schema.ToolCallOut(
                        id=c.id, function=schema.FunctionCall(name=c.name, arguments=c.arguments)
                    )
                    for c in calls
                ]
                or None,
            )
            choices.append(
                schema.ChatChoice(
                    index=i,
                    message=msg,
                    finish_reason=finish,
                    logprobs=chat_logprobs(lps[i]) if req.logprobs else None,
                )
            )
        body = schema.ChatCompletion(
            id=rid,
            created=created,
            model=config.model_id,
            system_fingerprint=config.fingerprint,
            choices=choices,
            usage=make_usage(len(ids), [d for d in done if d]),
        )
        return body.model_dump(exclude_none=False)

    def chunk(rid: str, created: int, choices: list[dict[str, Any]], **extra: Any) -> str:
        out = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": config.model_id,
            "system_fingerprint": config.fingerprint,
            "choices": choices,
        }
        out.update(extra)
        return json.dumps(out, ensure_ascii=False)

    async def _chat_stream(
        rid: str,
        created: int,
        ids: list[int],
        jobs: list[tuple[list[int], Params]],
        names: list[str],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        extra = {"usage": None} if include_usage else {}
        streams = [tools.ToolStream(names) if names else None for _ in jobs]
        done: list[Done] = []
        for i in range(len(jobs)):
            first = {"index": i, "delta": {"role": "assistant", "content": ""}}
            yield chunk(rid, created, [dict(first, finish_reason=None, logprobs=None)], **extra)
        async for i, ev in events(jobs):
            if isinstance(ev, Failed):
                yield json.dumps(failed(ev).body())
                return
            ts = streams[i]
            if isinstance(ev, Delta):
                text = ts.push(ev.text) if ts else ev.text
                if not text and not ev.logprobs:
                    continue
                lp = chat_logprobs(ev.logprobs).model_dump() if jobs[i][1].logprobs else None
                c = {"index": i, "delta": {"content": text}, "finish_reason": None, "logprobs": lp}
                yield chunk(rid, created, [c], **extra)
                continue
            done.append(ev)
            report(ev)
            finish = ev.finish_reason
            if ts:
                rest, calls = ts.finish()
                if rest:
                    c = {"index": i, "delta": {"content": rest}, "finish_reason": None}
                    yield chunk(rid, created, [dict(c, logprobs=None)], **extra)
                if calls:
                    finish = "tool_calls"
                    deltas = [
                        {
                            "index": k,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for k, call in enumerate(calls)
                    ]
                    c = {"index": i, "delta": {"tool_calls": deltas}, "finish_reason": None}
                    yield chunk(rid, created, [dict(c, logprobs=None)], **extra)
            c = {"index": i, "delta": {}, "finish_reason": finish, "logprobs": None}
            yield chunk(rid, created, [c], **extra)
        if include_usage:
            yield chunk(rid, created, [], usage=make_usage(len(ids), done).model_dump())
        yield "[DONE]"

    # --- completions --------------------------------------------------------------

    @app.post("/v1/completions")
    async def completions(req: schema.CompletionRequest) -> Any:
        check_request(req)
        prompts: list[list[int]] = []
        texts: list[str] = []
        for k, p in enumerate(req.prompts()):
            param = "prompt" if isinstance(req.prompt, str) else f"prompt[{k}]"
            if isinstance(p, str):
                ids = tok.encode(p, bos=tok.add_bos)
                texts.append(p)
            else:
                bad = [i for i in p if not 0 <= i < config.vocab_size]
                if bad:
                    raise APIError(
                        400,
                        f"token id {bad[0]} is out of range (vocab size {config.vocab_size})",
                        param=param,
                    )
                ids = list(p)
                texts.append(tok.decode(ids))
            if not ids:
                raise APIError(400, "the prompt is empty", param=param)
            check_context(ids, param)
            prompts.append(ids)
        check_n(req.n, len(prompts) * req.n)
        jobs = []
        for ids in prompts:
            for j in range(req.n):
                p = params(req, req.max_tokens, j)
                p.logprobs = req.logprobs is not None
                p.top_logprobs = req.logprobs or 0
                jobs.append((ids, p))
        admit(len(jobs))
        rid = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        prompt_tokens = sum(len(ids) for ids in prompts)
        echo = [texts[k // req.n] if req.echo else "" for k in range(len(jobs))]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(
                _completion_stream(rid, created, prompt_tokens, jobs, echo, include_usage),
                sep="\n",
            )
        out, lps, done = await collect(jobs, echo)
        choices = [
            schema.CompletionChoice(
                index=i,
                text=out[i],
                finish_reason=done[i].finish_reason,  # type: ignore[union-attr]
                logprobs=completion_logprobs(lps[i], len(echo[i]))
                if req.logprobs is not None
                else None,
            )
            for i in range(len(jobs))
        ]
        body = schema.Completion(
            id=rid,
            created=created,
            model=config.model_id,
            system_fingerprint=config.fingerprint,
            choices=choices,
            usage=make_usage(prompt_tokens, [d for d in done if d]),
        )
        return body.model_dump(exclude_none=False)

    def completion_logprobs(items: list[TokenLogprob], offset: int) -> schema.CompletionLogprobs:
        lp = schema.CompletionLogprobs()
        for x in items:
            t = token_text(x.id)
            lp.tokens.append(t)
            lp.token_logprobs.append(x.logprob)
            lp.top_logprobs.append({token_text(i): v for i, v in x.top})
            lp.text_offset.append(offset)
            offset += len(t)
        return lp

    async def _completion_stream(
        rid: str,
        created: int,
        prompt_tokens: int,
        jobs: list[tuple[list[int], Params]],
        echo: list[str],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        def piece(choices: list[dict[str, Any]], **extra: Any) -> str:
            out = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": config.model_id,
                "system_fingerprint": config.fingerprint,
                "choices": choices,
            }
            out.update(extra)
            return json.dumps(out, ensure_ascii=False)

        extra = {"usage": None} if include_usage else {}
        offsets = [len(e) for e in echo]
        for i, e in enumerate(echo):
            if e:
                yield piece([{"index": i, "text": e, "finish_reason": None, "logprobs": None}])
        done: list[Done] = []
        async for i, ev in events(jobs):
            if isinstance(ev, Failed):
                yield json.dumps(failed(ev).body())
                return
            if isinstance(ev, Delta):
                lp = None
                if jobs[i][1].logprobs:
                    lp = completion_logprobs(ev.logprobs, offsets[i]).model_dump()
                offsets[i] += len(ev.text)
                c = {"index": i, "text": ev.text, "finish_reason": None, "logprobs": lp}
                yield piece([c], **extra)
                continue
            done.append(ev)
            report(ev)
            c = {"index": i, "text": "", "finish_reason": ev.finish_reason, "logprobs": None}
            yield piece([c], **extra)
        if include_usage:
            yield piece([], usage=make_usage(prompt_tokens, done).model_dump())
        yield "[DONE]"

    return BodyLimit(app, config.max_body_bytes)
