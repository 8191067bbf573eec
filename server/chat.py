"""POST /v1/chat/completions: messages rendered with the model's chat
template, tool calls parsed out of the reply (or forced by a grammar),
response_format's JSON held by a grammar, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from server import images, jobs, schema, tools
from server.common import APIError, Served, Server
from server.engine import Delta, Done, Failed, TokenLogprob
from torchchat.grammar import GrammarError
from torchchat.tokenizer import TokenizerError
from torchchat.vision import ImageError

router = APIRouter()


def logprobs(srv: Served, items: list[TokenLogprob]) -> schema.ChatLogprobs:
    text = srv.engine.tokenizer.token_text

    def top(i: int, lp: float) -> schema.TopLogprob:
        t = text(i)
        return schema.TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8")))

    return schema.ChatLogprobs(
        content=[
            schema.ChatTokenLogprob(
                token=text(x.id),
                logprob=x.logprob,
                bytes=list(text(x.id).encode("utf-8")),
                top_logprobs=[top(i, lp) for i, lp in x.top],
            )
            for x in items
        ]
    )


def prompt_ids(
    srv: Served,
    req: schema.ChatCompletionRequest,
    use_tools: bool,
    sizes: list[tuple[int, int]] | None = None,
) -> list[int]:
    """The request's messages (and tools), rendered and encoded; each image
    part expanded to the vision tower's soft tokens, as the model's
    processor expands it (`sizes`: the images' (width, height), in order)."""
    if srv.template is None:
        raise APIError(
            400, "this model has no chat template; use /v1/completions", code="no_template"
        )
    messages = req.template_messages()
    system = srv.config.system_prompt
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    tool_defs = [t.model_dump(exclude_none=True) for t in req.tools or ()] if use_tools else None
    try:
        # The template writes any bos itself, as in `generate --chat-template`.
        text = srv.template.render(messages, add_generation_prompt=True, tools=tool_defs)
        vision = srv.engine.vision
        if vision is not None:
            text = vision.expand(text, srv.engine.tokenizer, sizes or [])
        return srv.engine.tokenizer.encode(text, bos=False)
    except TokenizerError as e:
        raise APIError(400, str(e), param="messages", code="template_error") from None
    except ImageError as e:
        raise APIError(400, str(e), param="messages", code="invalid_image") from None


async def image_spans(srv: Served, ids: list[int], pictures: list[Any]) -> list[Any]:
    """The images' embeddings at their soft tokens' places in `ids`, made
    by the vision tower off the event loop."""
    vision = srv.engine.vision
    if vision is None or not pictures:
        return []
    try:
        return await asyncio.to_thread(vision.spans, ids, pictures)
    except ImageError as e:
        raise APIError(400, str(e), param="messages", code="invalid_image") from None


@router.post("/v1/chat/completions")
async def chat(req: schema.ChatCompletionRequest, srv: Server) -> Any:
    jobs.check_request(srv.config, req)
    use_tools = bool(req.tools) and req.tool_choice != "none"
    names = [t.function.name for t in req.tools or ()] if use_tools else []
    parts = req.image_parts()
    if parts and srv.engine.vision is None:
        raise APIError(
            400,
            f"{parts[0][0]}: this model takes no images (a Gemma 3 4B or larger or a SmolVLM "
            "checkpoint does, served with --compile none)",
            param=parts[0][0],
            code="images_unsupported",
        )
    pictures = await images.read_images(srv.config, parts) if parts else []
    ids = prompt_ids(srv, req, use_tools, [p.size for p in pictures])
    jobs.check_context(srv.config, ids, "messages")
    spans = await image_spans(srv, ids, pictures)
    jobs.check_n(srv, req.n, req.n)
    max_tokens = req.max_completion_tokens or req.max_tokens
    forced = req.forced_tools()
    # A forced call's grammar wins over response_format: the reply is the call.
    grammar = jobs.response_grammar(req) if not forced else None
    if forced:
        # Llama 3.1's templates ask for bare JSON; every other template
        # gets the tagged form, which our parser reads unambiguously.
        llama_json = "<|python_tag|>" in (srv.engine.tokenizer.chat_template or "")
        defs = [t.model_dump(exclude_none=True) for t in forced]
        try:
            grammar = tools.forced_grammar(defs, llama_json)
        except GrammarError as e:
            raise APIError(400, f"tools: {e}", param="tools", code="invalid_schema") from None
    todo: list[jobs.Job] = []
    for j in range(req.n):
        p = jobs.params(srv.config, req, max_tokens, j)
        p.logprobs, p.top_logprobs = req.logprobs, req.top_logprobs or 0
        p.grammar = grammar
        p.images = spans
        todo.append((ids, p))
    jobs.admit(srv, len(todo))
    rid = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventSourceResponse(
            _stream(srv, rid, created, ids, todo, names, include_usage), sep="\n"
        )
    texts, lps, done = await jobs.collect(srv, todo, [""] * len(todo))
    choices = []
    for i, text in enumerate(texts):
        content: str | None = text
        calls: list[tools.ToolCall] = []
        if use_tools:
            content, calls = tools.parse(text, names)
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
                finish_reason="tool_calls" if calls else done[i].finish_reason,
                logprobs=logprobs(srv, lps[i]) if req.logprobs else None,
            )
        )
    body = schema.ChatCompletion(
        id=rid,
        created=created,
        model=srv.config.model_id,
        system_fingerprint=srv.config.fingerprint,
        choices=choices,
        usage=jobs.usage(srv, len(ids), done),
    )
    return body.model_dump(exclude_none=False)


async def _stream(
    srv: Served,
    rid: str,
    created: int,
    ids: list[int],
    todo: list[jobs.Job],
    names: list[str],
    include_usage: bool,
) -> AsyncIterator[str]:
    def chunk(choices: list[schema.ChatChunkChoice], usage: schema.Usage | None = None) -> str:
        c = schema.ChatCompletionChunk(
            id=rid,
            created=created,
            model=srv.config.model_id,
            system_fingerprint=srv.config.fingerprint,
            choices=choices,
            usage=usage,
        )
        return schema.sse(c, include_usage)

    def choice(
        i: int,
        finish_reason: Literal["stop", "length", "tool_calls"] | None = None,
        lp: schema.ChatLogprobs | None = None,
        **delta: Any,
    ) -> schema.ChatChunkChoice:
        return schema.ChatChunkChoice(
            index=i,
            delta=schema.ChatDelta(**delta),
            finish_reason=finish_reason,
            logprobs=lp,
        )

    streams = [tools.ToolStream(names) if names else None for _ in todo]
    done: list[Done] = []
    for i in range(len(todo)):
        yield chunk([choice(i, role="assistant", content="")])
    async for i, ev in jobs.events(srv, todo):
        if isinstance(ev, Failed):
            yield jobs.failed(ev).model().model_dump_json()
            return
        ts = streams[i]
        if isinstance(ev, Delta):
            text = ts.push(ev.text) if ts else ev.text
            if not text and not ev.logprobs:
                continue
            lp = logprobs(srv, ev.logprobs) if todo[i][1].logprobs else None
            yield chunk([choice(i, lp=lp, content=text)])
            continue
        done.append(ev)
        jobs.finished(srv, ev)
        finish: Literal["stop", "length", "tool_calls"] = ev.finish_reason
        if ts:
            rest, calls = ts.finish()
            if rest:
                yield chunk([choice(i, content=rest)])
            if calls:
                finish = "tool_calls"
                deltas = [
                    schema.ToolCallDelta(
                        index=k,
                        id=call.id,
                        function=schema.FunctionCall(name=call.name, arguments=call.arguments),
                    )
                    for k, call in enumerate(calls)
                ]
                yield chunk([choice(i, tool_calls=deltas)])
        yield chunk([choice(i, finish_reason=finish)])
    if include_usage:
        yield chunk([], usage=jobs.usage(srv, len(ids), done))
    yield "[DONE]"
