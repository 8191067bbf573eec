"""Continuous batching over torchchat's generation core.

Each request (each choice of a request with n > 1) is a job. A job takes a
free `torchchat.generate.Slot` and runs the same `generate_text()` /
`decode()` loop that `torchchat generate` and `chat` run, in a worker
thread, with its own `Sampler` (so its own RNG stream) and its own `Stats`.

Over the eager model the slots share one `SlotModel` (torchchat/slots.py):
one KV-cache row per slot. A slot's forward does not run the model itself;
it hands its tokens to the `Batcher`, whose thread waits until every slot
inside a generation has handed in its next step (a decode token, or one
chunk of a prompt), runs them all as one forward, and hands each its
logits. Requests thus join and leave the running batch between steps, and
a long prompt prefills one chunk per step, so running streams never wait
for more than one chunk.

A .pt2 exported with `--slots` has such a cache too and is batched the
same way (its `forward_slots` calls the package). Any other exported
artifact (.pte, .pt2) has a batch-1 cache: it serves one slot at a time,
behind the same queue.

More jobs than slots wait in a FIFO queue of bounded length; a request
that would overfill it is refused (HTTP 429) before it starts.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from server.stop import StopMatcher
from torchchat import grammar as grammars
from torchchat.generate import AdaptK, Draft, Slot, Stats, generate_text
from torchchat.sampling import Sampler
from torchchat.tokenizer import Tokenizer

if TYPE_CHECKING:
    from torchchat.generate import LLMModel
    from torchchat.model import Images, Model
    from torchchat.vision import ImageTower

log = logging.getLogger("torchchat.server")

# How long the batcher waits for a slow slot before running the others.
# A slot only lags by its own sampling and bookkeeping (well under this);
# the limit keeps one stuck thread from stalling every stream.
STRAGGLER_S = 0.02


class Cancelled(Exception):
    """The client went away; the job ends at the next step."""


class QueueFull(Exception):
    pass


# --- the batcher ---------------------------------------------------------------


class SlotsModel(Protocol):
    """What a Batcher steps: torchchat.slots.SlotModel, a .pt2 exported
    with --slots (Pt2Model) or a pipeline's SlotPipeline."""

    @property
    def max_seq_length(self) -> int: ...

    def forward_slots(self, entries: list, images: Images = ()) -> torch.Tensor: ...

    def hidden_slots(self, entries: list) -> list[torch.Tensor]: ...


@dataclass
class _Pending:
    ids: list[int]
    start: int
    # Wants the last hidden state of every token (an embedding), not logits.
    hidden: bool = False
    # Wants the logits after every token (a speculative draft to verify).
    every: bool = False
    # Image embeddings at offsets into ids (torchchat.model.Images).
    images: list = field(default_factory=list)
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    # Its own event, so that a finished step wakes each waiting job once and
    # a job handing in its step wakes only the batcher (one shared condition
    # woke every slot's thread on every hand-in: a GIL storm at 8+ slots).
    done: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Runs every slot's next step as one `SlotModel.forward_slots` call."""

    def __init__(self, model: SlotsModel):
        self.model = model
        self.steps = 0  # forwards run so far
        self.step_sizes: collections.deque[int] = collections.deque(maxlen=1024)  # slots per step
        self._cv = threading.Condition()
        self._active: set = set()
        self._pending: dict[int, _Pending] = {}
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, slot: int) -> None:
        with self._cv:
            self._active.add(slot)

    def leave(self, slot: int) -> None:
        with self._cv:
            self._active.discard(slot)
            self._cv.notify()  # the batcher may be waiting for this slot

    def run(
        self,
        slot: int,
        ids: Sequence[int],
        start: int,
        hidden: bool = False,
        every: bool = False,
        images: Sequence = (),
    ) -> torch.Tensor:
        """Blocks until the step that includes (ids at start) has run; the
        logits of the last id, [1, vocab], or with `every` of each id,
        [len(ids), vocab], or with `hidden` every id's last hidden state.
        `images` (offsets into ids) run in a forward of their own in the step:
        their attention mask is opened for their positions in every slot."""
        item = _Pending(list(ids), start, hidden, every, list(images))
        with self._cv:
            self._pending[slot] = item
            self._cv.notify()  # only the batcher waits on it
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.logits is not None
        return item.logits

    @torch.inference_mode()
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                deadline = time.monotonic() + STRAGGLER_S
                while not self._active <= self._pending.keys():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch = sorted(self._pending.items())
                self._pending = {}
            # Embeddings want another output than generations: a forward of
            # their own in the same step.
            for hidden in (False, True):
                part = [(s, p) for s, p in batch if p.hidden == hidden and not p.images]
                if part:
                    self._forward(part, hidden)
            for s, p in batch:
                if p.images:
                    self._forward([(s, p)], p.hidden)
            with self._cv:
                self.steps += 1
                self.step_sizes.append(len(batch))
            for _, p in batch:
                p.done.set()

    def _forward(self, part: list[tuple[int, _Pending]], hidden: bool) -> None:
        entries = [(s, p.ids, p.start, p.every) for s, p in part]
        try:
            images = part[0][1].images
            if hidden:
                out = self.model.hidden_slots(entries)
            elif images:
                out = [self.model.forward_slots(entries, images=images)]
            else:
                logits = self.model.forward_slots(entries)
                # Each entry's rows: one, or one per id it verifies.
                rows = [len(p.ids) if p.every else 1 for _, p in part]
                out = [logits[e - r : e] for r, e in zip(rows, itertools.accumulate(rows))]
        except Exception as e:  # handed to each waiting job
            for _, p in part:
                p.error = e
            return
        for (_, p), x in zip(part, out):
            p.logits = x


class SlotView:
    """One slot of a Batcher behind `LLMModel`'s forward(tokens, input_pos),
    so a plain `Slot` (and `decode()`) drives it."""

    def __init__(self, batcher: Batcher, index: int, max_seq_length: int, chunk: int):
        self.batcher = batcher
        self.index = index
        self.max_seq_length = max_seq_length
        self.chunk = chunk
        self.cancel: threading.Event | None = None

    def __call__(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, images: Sequence = ()
    ) -> torch.Tensor:
        ids = tokens.reshape(-1).tolist()
        start = int(input_pos[0])
        logits = None
        c = 0
        while c < len(ids):
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled()
            end = min(c + self.chunk, len(ids))
            # An image's soft tokens run in one forward: a chunk that would
            # cut one ends after it instead.
            for off, e in images:
                if off < end < off + e.shape[0]:
                    end = off + e.shape[0]
            mine = [(off - c, e) for off, e in images if c <= off < end]
            logits = self.batcher.run(self.index, ids[c:end], start + c, images=mine)
            c = end
        assert logits is not None
        return logits

    def forward_all(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The logits after each token, [T, vocab], in the same batched step
        as the other slots' tokens: what a speculating slot verifies its
        draft with (torchchat.generate.VerifyingModel)."""
        ids = tokens.reshape(-1).tolist()
        start = int(input_pos[0])
        out = []
        for c in range(0, len(ids), self.chunk):
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled()
            out.append(self.batcher.run(self.index, ids[c : c + self.chunk], start + c, every=True))
        return torch.cat(out)

    def hidden(self, ids: Sequence[int]) -> torch.Tensor:
        """Every id's last hidden state, [len(ids), dim], run from position 0
        in chunks as a prompt is (causal attention: the same as one run)."""
        out = [
            self.batcher.run(self.index, ids[c : c + self.chunk], c, hidden=True)
            for c in range(0, len(ids), self.chunk)
        ]
        return torch.cat(out)


# --- jobs ------------------------------------------------------------------------


@dataclass
class Params:
    """One generation's settings, OpenAI's names."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: Sequence[str] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    # Output held to this grammar (llguidance's, from torchchat.grammar): a
    # response_format's schema or a forced tool call.
    grammar: str | None = None
    # The prompt's images (torchchat.vision.ImageSpan), at their positions.
    images: Sequence = ()

    def sampler(self) -> Sampler:
        """Raises ValueError (naming the value) for settings the sampler refuses."""
        return Sampler(
            self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty, self.seed
        )


@dataclass
class TokenLogprob:
    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Done:
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stats: Stats


@dataclass
class Failed:
    message: str
    # Why the engine can no longer serve (a pipeline rank lost), when that
    # is why this generation failed: the request may be retried elsewhere.
    unavailable: str | None = None


Event = object  # Delta | Done | Failed


class _Pick:
    """The request's Sampler behind decode()'s Pick, with OpenAI's frequency
    and presence penalties applied to the logits first (the Sampler has no
    such setting; they count this generation's tokens only), the grammar's
    mask (torchchat.grammar.Guided) when the output is held to one, and each
    token's logprob recorded for the response."""

    def __init__(
        self,
        sampler: Sampler,
        p: Params,
        stop_ids: Sequence[int],
        tokenizer: Tokenizer | None = None,
    ):
        self.sampler, self.p = sampler, p
        self.tokenizer = tokenizer
        # Its matcher starts at the first token, whose logits give the model's
        # vocabulary size; every later mask is filled while the forward runs.
        self.guided = (
            grammars.Guided(p.grammar, tokenizer, sampler)
            if p.grammar is not None and tokenizer is not None
            else None
        )
        self.stop_ids = set(stop_ids)
        self.counts: dict[int, int] = {}
        self.recorded: list[TokenLogprob] = []

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        logits = logits.reshape(-1).float()
        if self.counts and (self.p.frequency_penalty or self.p.presence_penalty):
            ids = torch.tensor(list(self.counts))
            n = torch.tensor(list(self.counts.values()), dtype=torch.float32)
            logits = logits.clone()
            logits[ids] -= n * self.p.frequency_penalty + self.p.presence_penalty
        if self.guided is not None:
            tok = self.guided(logits, history)
        else:
            tok = self.sampler(logits, history)
        self.counts[tok] = self.counts.get(tok, 0) + 1
        if self.p.logprobs and tok not in self.stop_ids:
            lp = torch.log_softmax(logits, dim=-1)
            top: list[tuple[int, float]] = []
            if self.p.top_logprobs:
                v, i = torch.topk(lp, min(self.p.top_logprobs, lp.numel()))
                top = list(zip(i.tolist(), v.tolist()))
            self.recorded.append(TokenLogprob(tok, float(lp[tok]), top))
        return tok

    def take(self) -> list[TokenLogprob]:
        out, self.recorded = self.recorded, []
        return out


class Engine:
    """Slots, the queue in front of them, and the worker threads."""

    def __init__(
        self,
        slots: list[Slot],
        tokenizer: Tokenizer,
        max_queue: int = 64,
        batcher: Batcher | None = None,
    ):
        if not slots:
            raise ValueError("an engine needs at least one slot")
        self.slots = slots
        self.tokenizer = tokenizer
        self.batcher = batcher
        # The eager model's vision tower, if it has one.
        self.vision: ImageTower | None = None
        self.max_queue = max_queue
        self.max_seq_length = slots[0].max_seq_length
        self._admitted = 0  # jobs queued or running
        self._lock = threading.Lock()
        self._free: list[int] = list(range(len(slots)))
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._pool = ThreadPoolExecutor(len(slots), thread_name_prefix="slot")
        # (batcher step when the job was cancelled, step when its slot was free)
        self.cancellations: list[tuple[int, int]] = []

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def steps(self) -> int:
        return self.batcher.steps if self.batcher else 0

    def busy(self) -> int:
        return len(self.slots) - len(self._free)

    def problem(self) -> str | None:
        """Why this engine cannot serve, or None when it can."""
        if self.batcher is not None and not self.batcher.alive():
            return "the batcher thread has stopped"
        # A batched model that can break says why (torchchat.pipeline's
        # SlotPipeline, whose ranks are other processes).
        check = getattr(self.batcher.model, "problem", None) if self.batcher else None
        return check() if callable(check) else None

    def queued(self) -> int:
        return len(self._waiters)

    # Admission is synchronous so that a refusal can still be an HTTP status.
    def admit(self, jobs: int) -> None:
        with self._lock:
            if self._admitted + jobs > len(self.slots) + self.max_queue:
                raise QueueFull(
                    f"server busy: {len(self.slots)} slots and a queue of {self.max_queue} are "
                    "full; retry later"
                )
            self._admitted += jobs

    def _finished(self) -> None:
        with self._lock:
            self._admitted -= 1

    async def _acquire(self, prompt: Sequence[int]) -> int:
        if self._free:
            # The free slot that already holds the longest prefix of the prompt.
            def shared(i: int) -> int:
                held, n = self.slots[i].tokens, 0
                while n < min(len(held), len(prompt)) and held[n] == prompt[n]:
                    n += 1
                return n

            # Ties go to the lowest slot: a compiled SlotModel attends over
            # the rows up to the highest slot in use.
            best = max(self._free, key=lambda i: (shared(i), -i))
            self._free.remove(best)
            return best
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def _release_after(self, i: int, _done: object) -> None:
        """A future's done-callback: its slot is free once its thread is."""
        self._release(i)

    def _release(self, i: int) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(i)
                return
        self._free.append(i)

    @property
    def speculates(self) -> bool:
        """Whether slots draft and verify (--speculate)."""
        return any(s.draft is not None for s in self.slots)

    def speculate(self, drafters: Sequence[Draft], k: int, adapt: AdaptK | None = None) -> None:
        """Each slot drafts with its own drafter, up to `k` ids per step (or
        as `adapt` moves k), verified by its model in the batched step:
        decode() on the slot does the rest, as in generate."""
        for slot, draft in zip(self.slots, drafters, strict=True):
            slot.draft, slot.draft_k, slot.adapt_k = draft, k, adapt

    @property
    def embeds(self) -> bool:
        """Whether the model gives hidden states: the eager SlotModel and a
        package with slots do; a batch-1 package returns logits only."""
        model = self.batcher.model if self.batcher is not None else None
        return hasattr(model, "hidden_slots") and getattr(model, "gives_hidden", True)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each input's last hidden states, [len, dim], each run in a free slot
        through the batcher, beside the running generations, at most a slot
        per input at once. The caller has admitted min(len(inputs), n_slots)
        jobs; they are returned when this ends, however it ends."""
        loop = asyncio.get_running_loop()
        out: list[torch.Tensor | None] = [None] * len(inputs)
        todo = collections.deque(range(len(inputs)))
        workers = min(len(inputs), len(self.slots))

        async def worker() -> None:
            while todo:
                k = todo.popleft()
                i = await self._acquire(inputs[k])
                fut = loop.run_in_executor(self._pool, self._hidden, i, inputs[k])
                # The slot stays taken until its thread is done, even if the
                # client leaves first.
                fut.add_done_callback(functools.partial(self._release_after, i))
                out[k] = await asyncio.shield(fut)

        tasks = [loop.create_task(worker()) for _ in range(workers)]
        for t in tasks:
            t.add_done_callback(lambda _: self._finished())
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()  # one failed: the others stop taking inputs
        return [t for t in out if t is not None]  # every worker filled its inputs' places

    def _hidden(self, i: int, ids: Sequence[int]) -> torch.Tensor:
        slot, view = self.slots[i], self.slots[i].model
        assert isinstance(view, SlotView) and self.batcher is not None
        batcher = self.batcher
        batcher.join(view.index)
        try:
            slot.truncate(0)
            h = view.hidden(ids)
            # The cache now holds these ids: a later prompt may reuse them.
            slot.tokens.extend(int(t) for t in ids)
            return h
        finally:
            batcher.leave(view.index)

    def start(
        self, prompt: Sequence[int], params: Params, sink: asyncio.Queue, index: int
    ) -> asyncio.Task:
        """Runs one admitted job, putting (index, event) into `sink`.

        Cancelling the task (a client that went away) cancels the job; its
        slot is free again after at most one more step. The admission is
        returned however the task ends, even cancelled before it began.
        """

        async def pump() -> None:
            async for ev in self._run(prompt, params):
                sink.put_nowait((index, ev))

        task = asyncio.get_running_loop().create_task(pump())
        task.add_done_callback(lambda _: self._finished())
        return task

    async def _run(self, prompt: Sequence[int], params: Params) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        events: asyncio.Queue = asyncio.Queue()
        slot: int | None = None
        fut: asyncio.Future | None = None
        try:
            slot = await self._acquire(prompt)

            def emit(ev: Event) -> None:
                loop.call_soon_threadsafe(events.put_nowait, ev)

            fut = loop.run_in_executor(self._pool, self._work, slot, prompt, params, cancel, emit)
            while True:
                ev = await events.get()
                yield ev
                if isinstance(ev, (Done, Failed)):
                    break
        finally:
            cancel.set()
            cancelled_at = self.steps
            if slot is not None:
                i = slot

                def free(_: object = None) -> None:
                    if fut is not None and not fut.cancelled() and fut.exception() is None:
                        status, left_at = fut.result()
                        if status == "cancelled":
                            self.cancellations.append((cancelled_at, left_at))
                    self._release(i)

                if fut is None or fut.done():
                    free()
                else:
                    fut.add_done_callback(free)

    def _work(
        self,
        i: int,
        prompt: Sequence[int],
        params: Params,
        cancel: threading.Event,
        emit: Callable[[Event], None],
    ) -> tuple[str, int]:
        """(done | cancelled | failed, the batcher step at which the slot left)."""
        status = self._generate(i, prompt, params, cancel, emit)
        return status, self.steps

    def _generate(
        self,
        i: int,
        prompt: Sequence[int],
        params: Params,
        cancel: threading.Event,
        emit: Callable[[Event], None],
    ) -> str:
        slot = self.slots[i]
        view = slot.model if isinstance(slot.model, SlotView) else None
        if view is not None:
            view.cancel = cancel
            view.batcher.join(view.index)
        try:
            tok = self.tokenizer
            pick = _Pick(params.sampler(), params, tok.eos_ids, tok)
            stops = StopMatcher(params.stop)

            def on_text(text: str) -> bool:
                out = stops.push(text)
                if out:
                    emit(Delta(out, pick.take()))
                return stops.stopped or cancel.is_set()

            slot.check_fits(len(prompt), 0)
            budget = max(1, min(params.max_tokens, slot.max_seq_length - len(prompt)))
            stop_ids = () if params.ignore_eos else None
            reply = generate_text(slot, tok, prompt, pick, budget, on_text, stop_ids, params.images)
            if cancel.is_set():
                return "cancelled"
            tail = stops.flush()
            rest = [] if stops.stopped else pick.take()
            if tail or rest:
                emit(Delta(tail, rest))
            stats = reply.stats
            finish: Literal["stop", "length"] = (
                "stop" if stats.stop_reason in ("eos", "stopped") else "length"
            )
            emit(
                Done(
                    finish,
                    prompt_tokens=len(prompt),
                    completion_tokens=stats.num_generated_tokens,
                    cached_tokens=len(prompt) - stats.num_prompt_tokens,
                    stats=stats,
                )
            )
            return "done"
        except Cancelled:
            return "cancelled"
        except Exception as e:
            why = self.problem()
            if why:
                log.error("generation failed: %s", why)
            else:
                log.exception("generation failed")
            emit(Failed(f"generation failed: {type(e).__name__}: {e}", why))
            return "failed"
        finally:
            if view is not None:
                view.batcher.leave(view.index)
                view.cancel = None


def eager_engine(
    model: Model, tokenizer: Tokenizer, parallel: int, max_queue: int, chunk: int = 128
) -> Engine:
    """`parallel` slots over one batched copy of the eager model's cache."""
    from torchchat.slots import SlotModel

    return batched_engine(SlotModel(model, parallel), parallel, tokenizer, max_queue, chunk)


def batched_engine(
    slots_model: SlotsModel, parallel: int, tokenizer: Tokenizer, max_queue: int, chunk: int = 128
) -> Engine:
    """Slots 0..parallel-1 of a model with `forward_slots` (a SlotModel, or a
    .pt2 exported with --slots), batched by one Batcher."""
    batcher = Batcher(slots_model)
    seq = slots_model.max_seq_length
    slots = [Slot(SlotView(batcher, i, seq, chunk)) for i in range(parallel)]
    return Engine(slots, tokenizer, max_queue, batcher)


def serial_engine(model: LLMModel, tokenizer: Tokenizer, max_queue: int) -> Engine:
    """One slot over a batch-1 model (an exported .pte or .pt2)."""
    return Engine([Slot(model)], tokenizer, max_queue)


def sequences(model: LLMModel, n: int, chunk: int = 128) -> list[LLMModel]:
    """`n` independent sequences over one model (each with its own KV-cache
    row), as `LLMModel`s: a draft model's, one per slot. An eager model
    becomes a SlotModel; it, or a package with slots, is batched by a
    Batcher of its own. A batch-1 model serves one sequence only."""
    from torchchat.artifacts import Pt2Model
    from torchchat.model import Model
    from torchchat.slots import SlotModel

    slotted: SlotsModel | None = None
    if isinstance(model, Model):
        slotted = SlotModel(model, n)
    elif isinstance(model, Pt2Model) and model.n_slots >= n:
        slotted = model
    if slotted is not None:
        batcher = Batcher(slotted)
        seq = slotted.max_seq_length
        return [SlotView(batcher, i, seq, chunk) for i in range(n)]
    if n == 1:
        return [model]
    raise ValueError(f"{type(model).__name__} has a batch-1 cache: it cannot draft for {n} slots")
