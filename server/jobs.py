"""What chat and completions share: a request's checks and sampling
settings, its jobs on the engine (one per choice and prompt), their events,
and the usage they add up to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from server import schema
from server.common import APIError, Config, Served, check_model
from server.engine import Delta, Done, Failed, Params, QueueFull, TokenLogprob
from torchchat import grammar

log = logging.getLogger("torchchat.server")

# A job: the prompt's ids and its generation's settings.
Job = tuple[list[int], Params]


def check_request(config: Config, req: schema.SamplingRequest) -> None:
    check_model(config, req.model)
    refused = schema.unsupported(req.model_extra)
    if refused:
        raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")


def response_grammar(req: schema.SamplingRequest) -> str | None:
    """The grammar response_format asks for (JSON mode, or a JSON Schema),
    or None for plain text; a schema the engine refuses is a 400 with its
    reason."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if req.ignore_eos:
        raise APIError(
            400,
            "ignore_eos cannot be combined with response_format: the output ends where "
            "the JSON does",
            param="ignore_eos",
        )
    if fmt.type == "json_object":
        return grammar.json_object()
    assert fmt.json_schema is not None  # ResponseFormat checks it
    try:
        return grammar.json_schema(fmt.json_schema.schema_)
    except grammar.GrammarError as e:
        raise APIError(
            400,
            f"response_format.json_schema.schema: {e}",
            param="response_format.json_schema.schema",
            code="invalid_schema",
        ) from None


def params(
    config: Config, req: schema.SamplingRequest, max_tokens: int | None, choice: int
) -> Params:
    """Choice `choice`'s settings: the request's, else the server's flags."""
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
            req.repetition_penalty if req.repetition_penalty != 1.0 else config.repetition_penalty
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


def check_context(config: Config, ids: Sequence[int], param: str) -> None:
    if len(ids) >= config.max_seq_length:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens, but this model's context holds "
            f"{config.max_seq_length} (and needs room for at least one more)",
            param=param,
            code="context_length_exceeded",
        )


def check_n(srv: Served, n: int, jobs: int) -> None:
    slots = srv.engine.n_slots
    if jobs > slots:
        raise APIError(
            400,
            f"n is {n}: this server runs at most {slots} generations per request (--parallel)",
            param="n",
            code="n_too_large",
        )


def unavailable(why: str) -> APIError:
    """A request this server cannot serve now (OpenAI's 503: retry it)."""
    return APIError(
        503, f"unavailable: {why}; retry later", "server_error", code="service_unavailable"
    )


def admit(srv: Served, jobs: int) -> None:
    why = srv.engine.problem()
    if why:
        raise unavailable(why)
    try:
        srv.engine.admit(jobs)
    except QueueFull as e:
        raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None


def usage(srv: Served, prompt_tokens: int, done: Sequence[Done]) -> schema.Usage:
    completion = sum(d.completion_tokens for d in done)
    speculative = None
    if srv.engine.speculates:
        speculative = schema.SpeculativeUsage(
            draft_tokens=sum(d.stats.num_draft_tokens for d in done),
            accepted_tokens=sum(d.stats.num_accepted_tokens for d in done),
        )
    return schema.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=schema.PromptTokensDetails(
            cached_tokens=min((d.cached_tokens for d in done), default=0)
        ),
        speculative=speculative,
    )


def finished(srv: Served, done: Done) -> None:
    """A generation's end: its Stats to /metrics, its stats line to the log."""
    srv.metrics.observe(done.stats)
    if not srv.config.quiet:
        log.info("%s", done.stats.summary())


def failed(ev: Failed) -> APIError:
    if ev.unavailable:
        return unavailable(ev.unavailable)
    return APIError(500, ev.message, "server_error", code="generation_failed")


async def events(srv: Served, jobs: list[Job]) -> AsyncIterator[tuple[int, Delta | Done | Failed]]:
    """Every job's events as they come, (job index, event); cancels the
    jobs if the consumer stops early."""
    sink: asyncio.Queue = asyncio.Queue()
    tasks = [srv.engine.start(ids, p, sink, i) for i, (ids, p) in enumerate(jobs)]
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


async def collect(
    srv: Served, jobs: list[Job], prefixes: list[str]
) -> tuple[list[str], list[list[TokenLogprob]], list[Done]]:
    """A non-streamed answer: each job's text after its prefix, its
    logprobs and how it ended."""
    texts = list(prefixes)
    lps: list[list[TokenLogprob]] = [[] for _ in jobs]
    done: list[Done | None] = [None] * len(jobs)
    async for i, ev in events(srv, jobs):
        if isinstance(ev, Failed):
            raise failed(ev)
        if isinstance(ev, Delta):
            texts[i] += ev.text
            lps[i] += ev.logprobs
        else:
            done[i] = ev
            finished(srv, ev)
    ended = [d for d in done if d is not None]
    assert len(ended) == len(jobs)  # events() ends after every job's Done
    return texts, lps, ended
