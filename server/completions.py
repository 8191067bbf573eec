"""POST /v1/completions: raw prompts (text or token ids), encoded as
`generate` encodes `--prompt`, whole or streamed."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from server import jobs, schema
from server.common import APIError, Served, Server
from server.engine import Delta, Done, Failed, TokenLogprob

router = APIRouter()


def logprobs(srv: Served, items: list[TokenLogprob], offset: int) -> schema.CompletionLogprobs:
    """`offset`: where the first token's text starts in the choice's text."""
    text = srv.engine.tokenizer.token_text
    lp = schema.CompletionLogprobs()
    for x in items:
        t = text(x.id)
        lp.tokens.append(t)
        lp.token_logprobs.append(x.logprob)
        lp.top_logprobs.append({text(i): v for i, v in x.top})
        lp.text_offset.append(offset)
        offset += len(t)
    return lp


def prompts(srv: Served, req: schema.CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """Each prompt's ids and text."""
    tok, vocab = srv.engine.tokenizer, srv.config.vocab_size
    ids_out: list[list[int]] = []
    texts: list[str] = []
    for k, p in enumerate(req.prompts()):
        param = "prompt" if isinstance(req.prompt, str) else f"prompt[{k}]"
        if isinstance(p, str):
            ids = tok.encode(p, bos=tok.add_bos)
            texts.append(p)
        else:
            bad = [i for i in p if not 0 <= i < vocab]
            if bad:
                raise APIError(
                    400, f"token id {bad[0]} is out of range (vocab size {vocab})", param=param
                )
            ids = list(p)
            texts.append(tok.decode(ids))
        if not ids:
            raise APIError(400, "the prompt is empty", param=param)
        jobs.check_context(srv.config, ids, param)
        ids_out.append(ids)
    return ids_out, texts


@router.post("/v1/completions")
async def completions(req: schema.CompletionRequest, srv: Server) -> Any:
    jobs.check_request(srv.config, req)
    ids_list, texts = prompts(srv, req)
    jobs.check_n(srv, req.n, len(ids_list) * req.n)
    grammar = jobs.response_grammar(req)
    todo: list[jobs.Job] = []
    for ids in ids_list:
        for j in range(req.n):
            p = jobs.params(srv.config, req, req.max_tokens, j)
            p.logprobs = req.logprobs is not None
            p.top_logprobs = req.logprobs or 0
            p.grammar = grammar
            todo.append((ids, p))
    jobs.admit(srv, len(todo))
    rid = "cmpl-" + uuid.uuid4().hex
    created = int(time.time())
    prompt_tokens = sum(len(ids) for ids in ids_list)
    echo = [texts[k // req.n] if req.echo else "" for k in range(len(todo))]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventSourceResponse(
            _stream(srv, rid, created, prompt_tokens, todo, echo, include_usage), sep="\n"
        )
    out, lps, done = await jobs.collect(srv, todo, echo)
    choices = [
        schema.CompletionChoice(
            index=i,
            text=out[i],
            finish_reason=done[i].finish_reason,
            logprobs=logprobs(srv, lps[i], len(echo[i])) if req.logprobs is not None else None,
        )
        for i in range(len(todo))
    ]
    body = schema.Completion(
        id=rid,
        created=created,
        model=srv.config.model_id,
        system_fingerprint=srv.config.fingerprint,
        choices=choices,
        usage=jobs.usage(srv, prompt_tokens, done),
    )
    return body.model_dump(exclude_none=False)


async def _stream(
    srv: Served,
    rid: str,
    created: int,
    prompt_tokens: int,
    todo: list[jobs.Job],
    echo: list[str],
    include_usage: bool,
) -> AsyncIterator[str]:
    def chunk(choices: list[schema.CompletionChoice], usage: schema.Usage | None = None) -> str:
        c = schema.Completion(
            id=rid,
            created=created,
            model=srv.config.model_id,
            system_fingerprint=srv.config.fingerprint,
            choices=choices,
            usage=usage,
        )
        return schema.sse(c, include_usage)

    offsets = [len(e) for e in echo]
    for i, e in enumerate(echo):
        if e:
            yield chunk([schema.CompletionChoice(index=i, text=e)])
    done: list[Done] = []
    async for i, ev in jobs.events(srv, todo):
        if isinstance(ev, Failed):
            yield jobs.failed(ev).model().model_dump_json()
            return
        if isinstance(ev, Delta):
            lp = logprobs(srv, ev.logprobs, offsets[i]) if todo[i][1].logprobs else None
            offsets[i] += len(ev.text)
            yield chunk([schema.CompletionChoice(index=i, text=ev.text, logprobs=lp)])
            continue
        done.append(ev)
        jobs.finished(srv, ev)
        yield chunk([schema.CompletionChoice(index=i, text="", finish_reason=ev.finish_reason)])
    if include_usage:
        yield chunk([], usage=jobs.usage(srv, prompt_tokens, done))
    yield "[DONE]"
