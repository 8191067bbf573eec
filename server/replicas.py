"""The server's app on Ray Serve: each replica runs `create_app` over its own
engine, and a small front routes requests to them by prompt prefix.

`Replica` is a Serve deployment whose ASGI app is exactly
`create_app(engine, config)`: the same routes, streaming and errors as
`torchchat server`. With `--routing pow2` it is the application's ingress
(`serve.ingress`) and the HTTP proxy sends requests straight to it (Ray's
power-of-two-choices router). By default (`prefix`)
the ingress is `Front`, which reads the body, takes the conversation text
out of it and hands the request, raw, to a replica chosen by Ray Serve's
`PrefixCacheAffinityRouter`: a request that shares a prefix with one a
replica served goes to that replica, whose slots may still hold its KV
cache. The replica then runs the same app on the request (`Replica.asgi`).

A replica that dies is replaced by Serve. A request it was serving ends,
at the front, with OpenAI's error object and status 503 (or, mid-stream,
an error event, as the server sends for a failed generation) so that the
client can retry; a request it had not started is retried once on another
replica first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import Message, Receive, Scope, Send

from server import health
from server.common import APIError

log = logging.getLogger("torchchat.server")

# The ASGI scope keys a forwarded request keeps (the rest is Ray's or the
# front app's own state and does not travel).
SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
)


@dataclass
class Forwarded:
    """A request as the front hands it to a replica. `prompt` is what the
    prefix router reads (it looks for a `prompt` or `messages` attribute)."""

    scope: dict[str, Any]
    body: bytes
    prompt: str


def routing_text(body: bytes, method: str, path: str) -> str:
    """The conversation text a request starts with: its messages' contents
    or its prompt, in order; the route for a request without one (the
    router divides by the text's length, so it is never empty)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    parts: list[str] = []
    if isinstance(data, dict):
        messages, prompt = data.get("messages"), data.get("prompt")
        if isinstance(messages, list):
            for m in messages:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, str):
                    parts.append(content)
                elif isinstance(content, list):
                    parts += [p["text"] for p in content if isinstance(p, dict) and "text" in p]
        elif isinstance(prompt, str):
            parts.append(prompt)
        elif isinstance(prompt, list) and prompt:
            first = prompt[0]
            parts.append(first if isinstance(first, str) else " ".join(map(str, prompt)))
    return "".join(p for p in parts if isinstance(p, str)) or f"{method} {path}"


class Replica:
    """One engine (its slots, its continuous batching) and its app."""

    def __init__(self, argv: list[str], pipeline_interface: str | None = None):
        from server import main
        from server.app import create_app

        # The model is read from its path on this node (a shared path or the
        # node's own cache), never sent through the object store.
        args = main.build_parser().parse_args(argv)
        # With --pipeline-parallel N, this replica is rank 0 of N, the others
        # Ray actors in its placement group (server/ray_pipeline.py).
        self.ranks = None
        if (args.pipeline_parallel or 0) > 1:
            from server.ray_pipeline import Ranks

            self.ranks = Ranks(argv, args.pipeline_parallel, pipeline_interface)
            self.engine, self.config = self.ranks.build(args)
        else:
            self.engine, self.config = main.build(args)
        # Not `self.app`: serve.ingress's wrapper has a property of that name.
        self.served_app = create_app(self.engine, self.config)

    def __serve_build_asgi_app__(self) -> Any:
        return self.served_app

    def check_health(self) -> None:
        """Serve's periodic check: a replica whose batcher died, or whose
        pipeline lost a rank, is replaced."""
        problem = health.problem(self.engine) or (self.ranks and self.ranks.ended())
        if problem:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        """Serve's graceful stop: a pipeline's ranks are stopped with it."""
        ranks = getattr(self, "ranks", None)
        if ranks is not None:
            ranks.close()

    async def asgi(self, req: Forwarded) -> AsyncIterator[Message]:
        """Runs the app on a forwarded request; yields what it sends."""
        out: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            await gone.wait()  # the front stopped reading: the client left
            return {"type": "http.disconnect"}

        async def send(msg: Message) -> None:
            await out.put(msg)

        task = asyncio.ensure_future(self.served_app(req.scope, receive, send))
        task.add_done_callback(lambda _: out.put_nowait(None))
        try:
            while (msg := await out.get()) is not None:
                yield msg
            task.result()
        finally:
            gone.set()
            if not task.done():
                task.cancel()


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", code="replica_unavailable")


class Front:
    """The HTTP ingress of `--routing prefix`: forwards each request, raw, to
    a replica the prefix router picks. Routes, checks and errors all stay
    the replica's app's; this only moves bytes."""

    def __init__(self, replicas: DeploymentHandle, max_body_bytes: int):
        self.replicas = replicas.options(method_name="asgi", stream=True)
        self.max_body_bytes = max_body_bytes

    def __serve_build_asgi_app__(self) -> Any:
        # A plain coroutine function: uvicorn takes a bound method for ASGI 2.
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self.forward(scope, receive, send)

        return app

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body, more = b"", True
        # One byte past the limit is enough for the replica's BodyLimit to refuse it.
        while more and len(body) <= self.max_body_bytes:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client left before sending its body
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        kept = {k: scope[k] for k in SCOPE_KEYS if k in scope}
        kept["root_path"] = ""
        req = Forwarded(kept, body, routing_text(body, scope["method"], scope["path"]))
        started, sse = False, False
        for attempt in range(2):
            try:
                # A handle with stream=True answers with a generator.
                stream = self.replicas.remote(req)
                assert isinstance(stream, DeploymentResponseGenerator)
                async for msg in stream:
                    if msg["type"] == "http.response.start":
                        started = True
                        sse = (b"content-type", b"text/event-stream") in [
                            (k, v.split(b";")[0]) for k, v in msg.get("headers", [])
                        ]
                    await send(msg)
                return
            except RayError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning(
                    "replica failed (try %d, response started: %s): %s", attempt + 1, started, first
                )
                if started:
                    break
        error = unavailable("the replica serving this request failed; retry it")
        if not started:
            await error.response({"Retry-After": "1"})(scope, receive, send)
            return
        # Headers are out. A stream ends with an error event, as the server
        # ends a failed generation, and no [DONE]; a whole answer ends short
        # of its Content-Length, which a client reads as a failed request.
        event = f"data: {error.model().model_dump_json()}\n\n".encode() if sse else b""
        try:
            await send({"type": "http.response.body", "body": event, "more_body": False})
        except Exception:  # the response had already ended
            log.debug("could not send the error event", exc_info=True)


def replica_deployment(ingress: bool, **options: Any) -> Any:
    """The engine deployment: Serve's HTTP ingress itself (`pow2`), or behind
    the front (an application has one ingress)."""
    cls = serve.ingress()(Replica) if ingress else Replica
    return serve.deployment(cls, name="Replica", **options)


def front_deployment(**options: Any) -> Any:
    return serve.deployment(serve.ingress()(Front), name="Front", **options)
