"""GET /metrics: Prometheus' text format, with llama-server's metric names
where it has them.

The counters, the throughput gauges and the histograms are fed from each
finished generation's own `torchchat.generate.Stats` (the numbers its stats
line prints); the gauges of slots, queue and cache are read from the engine
at scrape time.
"""

from __future__ import annotations

import threading

import prometheus_client
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from server.common import Server
from server.engine import Engine
from torchchat.generate import Stats

router = APIRouter()

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


class _Rate:
    """Tokens and seconds since the last scrape: llama-server's throughput
    gauges average over that window, then start again."""

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def take(self) -> float:
        rate = self.tokens / self.seconds if self.tokens and self.seconds > 0 else 0.0
        self.tokens, self.seconds = 0, 0.0
        return rate


class Metrics:
    """One server's metrics, in a registry of its own."""

    def __init__(self, engine: Engine):
        # llama-server sends no `_created` series, and a scraper needs none.
        prometheus_client.disable_created_metrics()
        self.registry = r = CollectorRegistry()
        # llama-server's names (prometheus_client adds a counter's `_total`).
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens", "Number of prompt tokens processed.", registry=r
        )
        self.prompt_seconds = Counter("llamacpp:prompt_seconds", "Prompt process time", registry=r)
        self.tokens_predicted = Counter(
            "llamacpp:tokens_predicted", "Number of generation tokens processed.", registry=r
        )
        self.tokens_predicted_seconds = Counter(
            "llamacpp:tokens_predicted_seconds", "Predict process time", registry=r
        )
        self.prompt_rate = Gauge(
            "llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.", registry=r
        )
        self.predicted_rate = Gauge(
            "llamacpp:predicted_tokens_seconds",
            "Average generation throughput in tokens/s.",
            registry=r,
        )
        capacity = engine.n_slots * engine.max_seq_length

        def cached() -> int:
            return sum(slot.pos for slot in engine.slots)

        Gauge(
            "llamacpp:kv_cache_usage_ratio",
            "KV-cache usage. 1 means 100 percent usage.",
            registry=r,
        ).set_function(lambda: cached() / capacity)
        Gauge("llamacpp:kv_cache_tokens", "KV-cache tokens.", registry=r).set_function(cached)
        Gauge(
            "llamacpp:requests_processing", "Number of requests processing.", registry=r
        ).set_function(engine.busy)
        Gauge(
            "llamacpp:requests_deferred", "Number of requests deferred.", registry=r
        ).set_function(engine.queued)
        # Our own: llama-server has no latency histograms.
        self.ttft = Histogram(
            "torchchat:time_to_first_token_seconds",
            "Time from a generation's start (it has a slot) to its first token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "torchchat:inter_token_latency_seconds",
            "Mean time between a generation's tokens after the first, one sample per generation.",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        # Our own too: llama-server counts drafts in a response's timings
        # only (draft_n, draft_n_accepted). Their ratio is the acceptance.
        self.draft_tokens = Counter(
            "torchchat:draft_tokens",
            "Ids drafted by speculative decoding and verified by the model.",
            registry=r,
        )
        self.draft_accepted = Counter(
            "torchchat:draft_accepted_tokens",
            "Drafted ids the model's own picks kept.",
            registry=r,
        )
        self._lock = threading.Lock()
        self._prompt, self._predicted = _Rate(), _Rate()

    def observe(self, stats: Stats) -> None:
        """One finished generation."""
        prompt_s = max(0.0, stats.prompt_eval_end_ms - stats.inference_start_ms) / 1e3
        decode_s = max(0.0, stats.inference_end_ms - stats.first_token_ms) / 1e3
        n = stats.num_generated_tokens
        self.prompt_tokens.inc(stats.num_prompt_tokens)
        self.prompt_seconds.inc(prompt_s)
        self.tokens_predicted.inc(n)
        self.tokens_predicted_seconds.inc(decode_s)
        self.draft_tokens.inc(stats.num_draft_tokens)
        self.draft_accepted.inc(stats.num_accepted_tokens)
        with self._lock:
            self._prompt.add(stats.num_prompt_tokens, prompt_s)
            self._predicted.add(n, decode_s)
        if n:
            self.ttft.observe(stats.ttft_s)
        if n > 1:
            self.itl.observe(decode_s / (n - 1))

    def exposition(self) -> bytes:
        """The text a scrape gets; starts the throughput gauges' next window."""
        with self._lock:
            self.prompt_rate.set(self._prompt.take())
            self.predicted_rate.set(self._predicted.take())
        return prometheus_client.generate_latest(self.registry)


@router.get("/metrics")
async def metrics(srv: Server) -> Response:
    # The classic text format, as llama-server sends it (our names need
    # none of format 1.0.0's escaping).
    return Response(srv.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
