"""Pipeline parallelism: one model split by layers across processes, on one
host or several, over torch.distributed's gloo backend.

Each rank builds only its own stage from the checkpoint (a stage's
checkpoint reads only its tensors: torchchat.checkpoint's `stage`): the
first holds the embedding and the first layers, the last the last layers,
the final norm and the output. Rank 0 runs the one generation loop
(torchchat.generate) over a `Pipeline`, which is an LLMModel like any
other: its forward embeds and runs the first stage, sends the hidden states
rank to rank (each stage runs its layers on them and passes them on), and
returns the logits the last rank sends back. Sampling, Stats, chat and
grammars stay on rank 0; the other ranks run `serve` until rank 0 closes
the pipeline.

A prompt is prefilled in micro-batches: chunks of at least `microbatch`
tokens, each sent on as soon as its stage is done, so that every stage
works on some chunk at once. A decode step is one token through every
stage. The KV cache of each layer lives with its stage, indexed by
position as in one process, so a slot's truncation (chat, speculation's
rollback) needs no message.

The server batches many sequences (slots) in one forward: `SlotPipeline`
turns the pipeline into such a batched model. Each stage gives its layers
a KV-cache row per slot (torchchat.slots' SlotModel, built in place), and
a step's tokens of every slot travel rank to rank as one message with a
table of (slot, tokens, start position, rows wanted), cut into
micro-batches the same way. The last rank answers every message with a
status: the rows asked for, or why its stage failed, so that an error in
one stage fails that step on rank 0 and leaves every rank in step.

Rank 0 waits at most `--pipeline-timeout-s` for each answer of a step (the
first exchange also waits for the other ranks to load). A rank that dies
closes its sockets and fails the step at once; one that stops answering
(hung, stopped, its host cut off) fails it when the wait runs out, and gloo
then closes rank 0's connection to it. Either way the pipeline is lost:
the step raises PipelineLost, every later one at once, and shutdown stops
what it can without waiting on the lost rank (launch_local's ranks are
killed).

While no step runs (an idle server, a chat waiting for its user), rank 0
sends a heartbeat through every rank each quarter of the timeout, which
the last rank answers as it answers a step: a rank lost while idle is
found within the timeout, not at the next request, and the other ranks,
which now wait at most the timeout and a heartbeat for their previous
rank's next message (after their first: rank 0 may still be loading),
give up when rank 0 or a rank before them goes silent. A healthy step
never leaves a rank waiting that long: within a step each rank waits for
one micro-batch of the stage before it, which the timeout bounds.

Launch: `torchrun` (its RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_WORLD_SIZE
environment), or `launch_local`, which starts the other ranks of one host
itself, on the loopback interface.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from torchchat.errors import UserError

if TYPE_CHECKING:
    from torchchat.model import Model

log = logging.getLogger("torchchat.pipeline")

# Message tags between neighbouring ranks: a header, then the hidden
# states it describes; the last rank's logits to rank 0. A slots step
# also sends its table of entries; the last rank answers it with a reply
# header, then the rows, or a stage's error message.
_HEADER, _HIDDEN, _LOGITS, _ENTRIES, _REPLY, _MESSAGE = 1, 2, 3, 4, 5, 6
# A rank's report to rank 0 when the pipeline stops: its length, then its
# JSON bytes.
_REPORT = 7
# header = [op, tokens, start position, logits wanted, dtype]; for _SLOTS
# [op, tokens, entries, hidden wanted, dtype]; for _OPEN_SLOTS [op, slots,
# 0, 0, 0]; for _FAILED [op, message bytes, 0, 0, 0]; for _PING (the
# heartbeat, which the last rank answers with an empty reply) [op, 0, 0, 0, 0].
_RUN, _STOP, _OPEN_SLOTS, _SLOTS, _FAILED, _PING = 1, 0, 2, 3, 4, 5
# reply = [status, rows, columns]
_OK = 0
# What a slots entry wants from the last rank: no row (a chunk of a prompt
# before its last), its last token's, or every token's.
_NO_ROW, _LAST_ROW, _EVERY_ROW = 0, 1, 2
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# gloo's own limit (and the waits of --pipeline-timeout-s 0): between
# chat turns rank 0 waits for its user, not for the other ranks.
_TIMEOUT = timedelta(days=7)
# launch_local's ranks meet within this (each imports torch and ExecuTorch).
_START = timedelta(seconds=300)
# Rank 0's wait for an answer to a step: a step is one token, or one
# micro-batch of a prompt, through every stage; raise it for a model whose
# step takes longer.
DEFAULT_STEP_TIMEOUT_S = 120.0
# The first exchange's: the other ranks may still be loading their stages
# (from another host's disk).
_LOAD = timedelta(seconds=600)
# The GGUF kernels run 32 or more rows of a matmul as dequantized tiles and
# fewer (decode) with activations rounded to int8: chunks of at least 32
# compute as the whole prompt does.
DEFAULT_MICROBATCH = 32


class PipelineError(UserError):
    """A pipeline that cannot be set up as asked (one line for the user)."""


class StageFailed(RuntimeError):
    """A stage raised on a step; every rank is still in step."""


class PipelineLost(RuntimeError):
    """A rank died or stopped answering: the pipeline cannot run another
    step (one line for the user)."""


def _timed_out(e: RuntimeError) -> bool:
    text = str(e)
    return "Timed out" in text or "timeout" in text


def _gloo_line(e: RuntimeError) -> str:
    """gloo's error's first sentence: "[.../pair.cc:553] Connection closed
    by peer [addr]:port. This is ..." -> "Connection closed by peer [addr]:port"."""
    text = str(e).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(e).__name__)
    return line.split(". ")[0]


def _lost(e: RuntimeError, waited: timedelta) -> str:
    """Why the pipeline is lost, in one line, from gloo's error."""
    if _timed_out(e):
        return (
            f"pipeline rank lost: no answer within {waited.total_seconds():g} s "
            "(--pipeline-timeout-s); a rank has stopped responding"
        )
    return f"pipeline rank lost: {_gloo_line(e)}"


def heartbeat_s(timeout_s: float) -> float:
    """How long rank 0 lets the pipeline idle before a heartbeat, for
    --pipeline-timeout-s `timeout_s` (0: no heartbeat, no limit)."""
    return timeout_s / 4


def worker_wait(timeout_s: float) -> timedelta:
    """How long a rank past 0 waits for its previous rank's next message:
    a micro-batch of a step (at most the timeout), or an idle pipeline's
    next heartbeat, with room to spare."""
    if timeout_s <= 0:
        return _TIMEOUT
    return timedelta(seconds=timeout_s + heartbeat_s(timeout_s))


def add_args(p: argparse.ArgumentParser) -> None:
    """--pipeline-parallel and --pipeline-microbatch (generate, chat, server)."""
    p.add_argument(
        "--pipeline-parallel",
        type=int,
        metavar="N",
        help="split the model's layers across N processes (torchrun's, on one host or several; "
        "without torchrun, N on this host), each reading only its own layers",
    )
    p.add_argument(
        "--pipeline-microbatch",
        type=int,
        metavar="TOKENS",
        help="with --pipeline-parallel, send prompts through the stages in chunks of at least "
        f"this many tokens (default {DEFAULT_MICROBATCH}; 0: whole)",
    )
    p.add_argument(
        "--pipeline-timeout-s",
        type=float,
        metavar="SECONDS",
        help="with --pipeline-parallel, how long rank 0 waits for the other ranks' answer to a "
        "step, or to the heartbeat it sends while idle, before it gives the pipeline up (the "
        "server answers 503, and exits for torchrun --max-restarts to rebuild it; generate and "
        "chat exit with an error); the other ranks give up on a silent rank 0 after this and a "
        f"quarter more (default {DEFAULT_STEP_TIMEOUT_S:g}; 0: no limit, no heartbeat)",
    )


@dataclass(frozen=True)
class Rank:
    """This process's place in the pipeline."""

    rank: int
    world: int
    local_world: int = 1  # ranks on this host, which share its cores

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1

    def layers(self, n_layers: int) -> range:
        """This rank's layers: contiguous, every rank within one of the
        others' count (the earlier ranks take the remainder)."""
        return split_layers(n_layers, self.world)[self.rank]


def split_layers(n_layers: int, world: int) -> list[range]:
    if world > n_layers:
        raise PipelineError(f"--pipeline-parallel {world}: the model has only {n_layers} layers")
    base, extra = divmod(n_layers, world)
    out, start = [], 0
    for r in range(world):
        n = base + (1 if r < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def rank_from_env(world: int) -> Rank:
    """The Rank torchrun (or launch_local) gives this process; `world` is
    what --pipeline-parallel asks for, and must match."""
    got = int(os.environ.get("WORLD_SIZE", "1"))
    if got != world:
        raise PipelineError(
            f"--pipeline-parallel {world} needs {world} processes, but WORLD_SIZE is {got}; "
            f"launch with torchrun --nproc-per-node {world} (or across hosts, --nnodes)"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return Rank(int(os.environ["RANK"]), world, local)


def under_launcher() -> bool:
    """Whether torchrun (or launch_local) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restarts_left() -> int:
    """How many more times torchrun (--max-restarts) will restart this
    process's group when one of its processes fails: 0 outside torchrun."""
    try:
        most = int(os.environ["TORCHELASTIC_MAX_RESTARTS"])
        done = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    except (KeyError, ValueError):
        return 0
    return max(0, most - done)


# This process's rank while it is in a process group.
_RANK: Rank | None = None


def init(rank: Rank, store: Any = None, threads: int | None = None) -> None:
    """Joins the process group (env:// unless a store is given) and gives
    this rank `threads`, by default its share of the host's cores (a
    launcher that reserves cores per rank, Ray, says how many)."""
    import torch.distributed as dist

    global _RANK
    if threads is None:
        threads = len(os.sched_getaffinity(0)) // max(1, rank.local_world)
    torch.set_num_threads(max(1, threads))
    if _RANK is not None:
        return
    if rank.local_world == rank.world:
        # Every rank on this host: gloo on loopback, not the hostname's address.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    kw: dict[str, Any] = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world, timeout=_TIMEOUT, **kw)
    _RANK = rank


def join(world: int) -> Rank:
    """This process's rank in a pipeline of `world` ranks: the group it is
    in (launch_local's), else torchrun's, joined now."""
    if _RANK is not None:
        if _RANK.world != world:
            raise PipelineError(f"this process is in a pipeline of {_RANK.world}, not {world}")
        return _RANK
    rank = rank_from_env(world)
    init(rank, _torchrun_store(rank))
    return rank


def _torchrun_store(rank: Rank) -> Any:
    """torchrun's store (its agent's, on the master), its keys under this
    restart of the group; None outside torchrun. A static rendezvous
    (--master-addr, the two-host recipe) keeps one store across restarts,
    so a rank restarted on one host would otherwise read the addresses of
    the ranks it replaces, and join the group that just failed."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        rank.world,
        is_master=False,
        timeout=_LOAD,
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"torchchat/pipeline/{restart}", store)


def close_group() -> None:
    import torch.distributed as dist

    global _RANK
    if _RANK is not None:
        dist.destroy_process_group()
        _RANK = None


# --- one stage ----------------------------------------------------------------------


def vm_hwm_bytes() -> int:
    """This process's peak resident set (VmHWM), from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def held_bytes(model: torch.nn.Module) -> tuple[int, int, int]:
    """(weights, KV cache, other buffers) a model holds, in bytes, each
    storage once (a tied embedding and output; the mmapped GGUF's views,
    which are resident only where read). Other buffers: each layer's causal
    mask (ExecuTorch's, max_seq_length squared) and the RoPE tables."""
    seen: set[int] = set()
    weights = cache = other = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t is None or t.is_meta:
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        n = t.untyped_storage().nbytes()
        if name.endswith(("k_cache", "v_cache")):
            cache += n
        elif name.endswith(("mask", "freqs_cos", "freqs_sin")):
            other += n
        else:
            weights += n
    return weights, cache, other


class StageModel:
    """One rank's stage: its layers of the model (torchchat.model's
    build_model with `layers`), run on token ids (the first stage) or on the
    previous stage's hidden states."""

    def __init__(self, model: Model, rank: Rank):
        self.model = model
        self.rank = rank
        self.transformer = model.transformer
        self.dim = model.config.dim
        self.dtype = next(
            (p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32
        )
        if self.dtype not in _DTYPES:
            self.dtype = torch.float32
        # The server's slots (torchchat.slots.SlotModel), once opened.
        self.slots: Any = None

    def open_slots(self, n: int) -> None:
        """Gives each of this stage's layers a KV-cache row per slot, in
        place: from now on the stage runs slots steps only."""
        from torchchat.slots import SlotModel

        if self.slots is None:
            self.slots = SlotModel(self.model, n)
        elif self.slots.n_slots != n:
            raise PipelineError(f"this stage has {self.slots.n_slots} slots, not {n}")

    @torch.inference_mode()
    def run_slots(
        self, x: torch.Tensor, entries: torch.Tensor, hidden: bool = False
    ) -> torch.Tensor | None:
        """One slots step: ids [1, T] (the first stage) or hidden states
        [1, T, dim], laid out as `entries` [E, 4] (slot, tokens, start,
        rows wanted) say. The hidden states after this stage's layers; on
        the last stage the rows wanted ([rows, vocab] logits, or with
        `hidden` the final norm's output, [rows, dim]), None for none."""
        from torchchat.slots import SlotBatch

        sm = self.slots
        if sm is None:
            raise RuntimeError("this stage has no slots open")
        spans: list[tuple[int, int, int, int]] = []
        pos: list[int] = []
        slots: list[int] = []
        rows: list[int] = []
        first = 0
        for slot, n, start, want in entries.tolist():
            if not 0 <= slot < sm.n_slots:
                raise ValueError(f"slot {slot} out of range (0..{sm.n_slots - 1})")
            if start < 0 or start + n > sm.max_seq_length:
                raise ValueError(f"slot {slot}: {start}+{n} exceeds the cache")
            spans.append((slot, first, n, start))
            pos.extend(range(start, start + n))
            slots.extend([slot] * n)
            if want == _EVERY_ROW:
                rows.extend(range(first, first + n))
            elif want == _LAST_ROW:
                rows.append(first + n - 1)
            first += n
        if first != x.shape[1]:
            raise ValueError(f"the entries name {first} tokens, the step has {x.shape[1]}")
        sm.plan.batch = SlotBatch(torch.tensor(slots), spans)
        # Only the last stage reads last_valid_token_pos (the others give
        # every position); it needs one even when no row is wanted.
        options = {
            "input_pos": torch.tensor(pos),
            "last_valid_token_pos": torch.tensor(rows or [first - 1]),
        }
        t = self.transformer
        if not self.rank.last:
            return t(x, options) if x.dtype == torch.long else t(None, options, x)
        output = t.apply_output
        t.apply_output = output and bool(rows) and not hidden
        try:
            out = t(x, options) if x.dtype == torch.long else t(None, options, x)
        finally:
            t.apply_output = output
        return out.reshape(len(rows), -1).float() if rows else None

    @torch.inference_mode()
    def run(self, x: torch.Tensor, input_pos: torch.Tensor, logits: bool = True) -> torch.Tensor:
        """Ids [1, T] (first stage) or hidden states [1, T, dim]: the hidden
        states after this stage's layers, or on the last stage the logits of
        the last position (when `logits`; else nothing worth sending)."""
        t = self.transformer
        options = {"input_pos": input_pos}
        if x.dtype == torch.long:
            return t(x, options)
        if logits or not self.rank.last:
            return t(None, options, x)
        # A prompt's chunk before its last: its logits are never used.
        t.apply_output = False
        try:
            return t(None, options, x)
        finally:
            t.apply_output = True

    def report(self) -> dict[str, Any]:
        weights, cache, other = held_bytes(self.model)
        layers = self.model.layers
        return {
            "rank": self.rank.rank,
            "layers": [layers.start, layers.stop],
            "weight_bytes": weights,
            "kv_cache_bytes": cache,
            "buffer_bytes": other,
            "peak_rss_bytes": vm_hwm_bytes(),
        }


def microbatches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) chunks of n tokens, each at least `size` long (the last
    takes the remainder); one chunk when `size` < 1 or n < 2 * size."""
    if size < 1 or n < 2 * size:
        return [(0, n)]
    bounds = list(range(0, n - n % size, size))
    return [(a, b) for a, b in zip(bounds, [*bounds[1:], n])]


@dataclass
class _Sends:
    """Sends in flight, and the tensors they read until they complete."""

    works: list[Any] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)

    def add(self, dst: int, tag: int, *tensors: torch.Tensor) -> None:
        import torch.distributed as dist

        for t in tensors:
            self.tensors.append(t)
            self.works.append(dist.isend(t, dst, tag=tag))

    def wait(self, timeout: timedelta | None = None) -> None:
        for w in self.works:
            if timeout is None:
                w.wait()
            else:
                w.wait(timeout)
        self.works, self.tensors = [], []


def _recv(t: torch.Tensor, src: int, tag: int, timeout: timedelta) -> None:
    """dist.recv, waiting at most `timeout` (gloo then closes the
    connection to `src`: the wait cannot be resumed)."""
    import torch.distributed as dist

    work = dist.irecv(t, src, tag=tag)
    assert work is not None  # None only for a rank outside the group
    work.wait(timeout)


def _header(op: int, n: int, start: int, logits: bool, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([op, n, start, int(logits), _DTYPES.index(dtype)], dtype=torch.long)


class Pipeline:
    """Rank 0's view of the whole pipeline: an LLMModel whose forward runs
    every stage and returns the last position's logits, [1, vocab]."""

    def __init__(
        self,
        stage: StageModel,
        microbatch: int = DEFAULT_MICROBATCH,
        timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
    ):
        if not stage.rank.first:
            raise ValueError("the Pipeline runs on rank 0")
        if timeout_s < 0:
            raise PipelineError("--pipeline-timeout-s must be 0 (no limit) or more")
        self.stage = stage
        self.timeout = timedelta(seconds=timeout_s) if timeout_s > 0 else _TIMEOUT
        # Whether the other ranks have answered once (they are loaded).
        self.answered = False
        # Why the pipeline cannot run another step (PipelineLost's message).
        self.broken: str | None = None
        self.rank = stage.rank
        self.microbatch = microbatch
        self.max_seq_length: int = stage.model.max_seq_length
        self.config = stage.model.config
        self.vocab_size: int = stage.model.config.vocab_size
        # Logits the last rank owes for a forward that was interrupted
        # (Ctrl-C) after its last chunk went out: received before stopping.
        self._owed = False
        # One exchange with the ranks at a time: the server's batcher thread
        # steps while its main thread may close the pipeline.
        self.lock = threading.Lock()
        self.closed = False
        self.slotted = False  # the stages' caches have slots (SlotPipeline)
        # When the ranks last heard from rank 0 (monotonic seconds).
        self.last_sent = time.monotonic()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if timeout_s > 0:
            self._beat = threading.Thread(
                target=self._heartbeats, args=(heartbeat_s(timeout_s),), daemon=True
            )
            self._beat.start()
        _OPEN.append(self)

    def _heartbeats(self, every: float) -> None:
        while not self._stop.wait(every / 2):
            if time.monotonic() - self.last_sent >= every:
                with contextlib.suppress(PipelineLost):
                    self.heartbeat()

    def heartbeat(self) -> bool:
        """Rank 0, while no step runs: a heartbeat through every rank, and
        the last rank's answer (at most the timeout). False when a step
        was running (it is the heartbeat) or the pipeline is closed or
        lost; raises PipelineLost when this heartbeat loses it."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.closed or self.broken is not None:
                return False
            with self.talking():
                if self._owed:
                    self._logits()
                sends = _Sends()
                sends.add(1, _HEADER, _header(_PING, 0, 0, False, torch.float32))
                self.last_sent = time.monotonic()
                _reply(self.rank, self.wait_limit())
                sends.wait(self.wait_limit())
                self.answered = True
            return True
        finally:
            self.lock.release()

    def wait_limit(self) -> timedelta:
        """How long to wait for the next answer."""
        return self.timeout if self.answered else max(self.timeout, _LOAD)

    @contextlib.contextmanager
    def talking(self) -> Iterator[None]:
        """Around an exchange with the other ranks: gloo's error (a rank
        gone, or no answer in time) loses the pipeline, as PipelineLost."""
        if self.broken is not None:
            raise PipelineLost(self.broken)
        waited = self.wait_limit()
        try:
            yield
        except RuntimeError as e:
            if isinstance(e, (PipelineLost, StageFailed)):
                raise
            # Said once, by whoever catches it (the server's log, the CLI's
            # one line).
            self.broken = _lost(e, waited)
            self._owed = False
            raise PipelineLost(self.broken) from None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        if self.slotted:
            raise RuntimeError("this pipeline serves slots (SlotPipeline)")
        with self.lock:  # not beside a heartbeat
            sends = _Sends()
            chunks = microbatches(tokens.shape[1], self.microbatch)
            for i, (a, b) in enumerate(chunks):
                h = self.stage.run(tokens[:, a:b], input_pos[a:b]).contiguous()
                last = i == len(chunks) - 1
                with self.talking():
                    sends.add(1, _HEADER, _header(_RUN, b - a, int(input_pos[a]), last, h.dtype))
                    sends.add(1, _HIDDEN, h)
                self.last_sent = time.monotonic()
                self._owed = last
            with self.talking():
                logits = self._logits()
                sends.wait(self.wait_limit())
            return logits

    def _logits(self) -> torch.Tensor:
        logits = torch.empty(1, self.vocab_size, dtype=torch.float32)
        _recv(logits, self.rank.world - 1, _LOGITS, self.wait_limit())
        self._owed = False
        self.answered = True
        return logits

    def close(self) -> list[dict[str, Any]]:
        """Stops every rank; what each held and its peak RSS, by rank (rank
        0's alone when the pipeline is lost)."""
        _OPEN.remove(self)
        self._stop.set()
        with self.lock:  # after the step in flight, if any
            self.closed = True
            if self.broken is None:
                with contextlib.suppress(PipelineLost), self.talking():
                    if self._owed:
                        self._logits()
                    return stop_ranks(self.rank, self.stage.report(), self.wait_limit())
            return [self.stage.report()]


# Pipelines this process opened and has not closed (shutdown closes them).
_OPEN: list[Pipeline] = []


Piece = tuple[int, list[int], int, int]  # (slot, ids, start, rows wanted)


def slot_chunks(pieces: Sequence[Piece], size: int) -> list[list[Piece]]:
    """A step's entries cut into micro-batches of at least `size` tokens
    (`microbatches` over all of them, in order): an entry cut in two keeps
    its rows wanted in its last piece (every piece, for every row)."""
    total = sum(len(ids) for _, ids, _, _ in pieces)
    out = []
    for a, b in microbatches(total, size):
        chunk, f = [], 0
        for slot, ids, start, want in pieces:
            lo, hi = max(a, f), min(b, f + len(ids))
            if lo < hi:
                end = hi == f + len(ids)
                part_want = want if end or want == _EVERY_ROW else _NO_ROW
                chunk.append((slot, ids[lo - f : hi - f], start + lo - f, part_want))
            f += len(ids)
        out.append(chunk)
    return out


class SlotPipeline:
    """Rank 0's pipeline as the server's batched model: `forward_slots` and
    `hidden_slots` as torchchat.slots.SlotModel's, each a step through every
    stage, whose layers hold a cache row per slot. Opening it gives every
    stage its slots (and checks that each could)."""

    def __init__(self, pipe: Pipeline, n_slots: int):
        self.pipe = pipe
        self.stage = pipe.stage
        self.n_slots = n_slots
        self.max_seq_length = pipe.max_seq_length
        self.vocab_size = pipe.vocab_size
        self.config = pipe.config
        with pipe.lock:
            pipe.slotted = True
            self.stage.open_slots(n_slots)
            sends = _Sends()
            try:
                with pipe.talking():
                    sends.add(1, _HEADER, _header(_OPEN_SLOTS, n_slots, 0, False, torch.float32))
                    _, failed = _reply(pipe.rank, pipe.wait_limit())
                    sends.wait(pipe.wait_limit())
                pipe.answered = True
            except PipelineLost as e:  # a rank that failed to load has gone
                raise PipelineError(str(e)) from None
        if failed is not None:
            raise PipelineError(f"a pipeline rank could not open {n_slots} slots: {failed}")

    @property
    def broken(self) -> str | None:
        """Why the pipeline cannot serve: a rank has gone or stopped
        answering, so the ranks' messages are out of step and every later
        step would hang or fail."""
        return self.pipe.broken

    def problem(self) -> str | None:
        return self.broken

    def forward_slots(self, entries: list, images: Sequence = ()) -> torch.Tensor:
        """[(slot, ids, start[, every]), ...]: each entry's last logits, or
        every id's for one with `every`, [rows, vocab]."""
        if images:
            raise ValueError("images run in one process; drop --pipeline-parallel")
        pieces = [
            (e[0], list(e[1]), e[2], _EVERY_ROW if len(e) > 3 and e[3] else _LAST_ROW)
            for e in entries
        ]
        return self._step(pieces, hidden=False)

    def hidden_slots(self, entries: list) -> list[torch.Tensor]:
        """Each entry's final-norm output at every one of its ids, [len(ids), dim]."""
        pieces = [(e[0], list(e[1]), e[2], _EVERY_ROW) for e in entries]
        h = self._step(pieces, hidden=True)
        return list(torch.split(h, [len(p[1]) for p in pieces]))

    def _step(self, pieces: list[Piece], hidden: bool) -> torch.Tensor:
        with self.pipe.lock:
            if self.pipe.closed:
                raise RuntimeError("the pipeline is closed")
            # A stage's own failure is StageFailed; gloo's (a rank gone or
            # silent) loses the pipeline.
            with self.pipe.talking():
                return self._exchange(pieces, hidden)

    @torch.inference_mode()
    def _exchange(self, pieces: list[Piece], hidden: bool) -> torch.Tensor:
        sends = _Sends()
        sent, failed = 0, None
        for chunk in slot_chunks(pieces, self.pipe.microbatch):
            ids = torch.tensor([[i for _, chunk_ids, _, _ in chunk for i in chunk_ids]])
            table = torch.tensor([[s, len(c), start, w] for s, c, start, w in chunk])
            try:
                h = self.stage.run_slots(ids, table, hidden)
            except Exception as e:  # nothing of this chunk went out
                failed = f"{type(e).__name__}: {e}"
                break
            assert h is not None
            h = h.contiguous()
            sends.add(1, _HEADER, _header(_SLOTS, ids.shape[1], len(chunk), hidden, h.dtype))
            sends.add(1, _ENTRIES, table)
            sends.add(1, _HIDDEN, h)
            self.pipe.last_sent = time.monotonic()
            sent += 1
        rows = []
        limit = self.pipe.wait_limit()
        for _ in range(sent):  # every chunk that went out is answered
            out, why = _reply(self.pipe.rank, limit)
            failed = failed or why
            if out is not None:
                rows.append(out)
        sends.wait(limit)
        if failed is not None:
            raise StageFailed(f"pipeline stage failed: {failed}")
        width = self.stage.dim if hidden else self.vocab_size
        return torch.cat(rows) if rows else torch.empty(0, width)


def _reply(rank: Rank, timeout: timedelta) -> tuple[torch.Tensor | None, str | None]:
    """Rank 0: the last rank's answer to one message: (rows, None), or
    (None, why its stage failed)."""
    head = torch.empty(3, dtype=torch.long)
    last = rank.world - 1
    _recv(head, last, _REPLY, timeout)
    status, rows, cols = (int(x) for x in head)
    if status != _OK:
        msg = torch.empty(rows, dtype=torch.uint8)
        _recv(msg, last, _MESSAGE, timeout)
        return None, bytes(msg.tolist()).decode(errors="replace")
    if rows == 0:
        return None, None
    out = torch.empty(rows, cols, dtype=torch.float32)
    _recv(out, last, _LOGITS, timeout)
    return out, None


def _message(text: str) -> torch.Tensor:
    """An error's text as bytes to send (never empty: gloo sends no empty tensor)."""
    return torch.tensor(list((text or "failed").encode()[:4096]), dtype=torch.uint8)


def _answer(out: torch.Tensor | None, failed: str | None, wait: timedelta) -> None:
    """The last rank: a reply to rank 0 (the rows, or the failure)."""
    sends = _Sends()
    if failed is not None:
        msg = _message(failed)
        sends.add(0, _REPLY, torch.tensor([_FAILED, msg.numel(), 0]))
        sends.add(0, _MESSAGE, msg)
    else:
        rows, cols = (0, 0) if out is None else out.shape
        sends.add(0, _REPLY, torch.tensor([_OK, rows, cols]))
        if out is not None:
            sends.add(0, _LOGITS, out.contiguous())
    sends.wait(wait)


def stop_ranks(
    rank: Rank, report: dict[str, Any] | None = None, timeout: timedelta = _LOAD
) -> list[dict[str, Any]]:
    """Rank 0: tells every other rank to stop, and gathers their reports
    (rank 0's own is `report`, None when it built nothing), waiting at most
    `timeout` for each."""
    import torch.distributed as dist

    work = dist.isend(_header(_STOP, 0, 0, False, torch.float32), 1, tag=_HEADER)
    assert work is not None  # None only for a rank outside the group
    work.wait(timeout)
    reports: list[Any] = [report]
    for r in range(1, rank.world):
        size = torch.empty(1, dtype=torch.long)
        _recv(size, r, _REPORT, timeout)
        text = torch.empty(int(size), dtype=torch.uint8)
        _recv(text, r, _REPORT, timeout)
        reports.append(json.loads(bytes(text.tolist())))
    return reports


def _send_report(report: dict[str, Any], wait: timedelta) -> None:
    text = torch.tensor(list(json.dumps(report).encode()), dtype=torch.uint8)
    sends = _Sends()
    sends.add(0, _REPORT, torch.tensor([text.numel()]), text)
    sends.wait(wait)


def shutdown(rank: Rank, procs: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rank 0, at the end of a command: closes its pipeline, or stops the
    other ranks when it never opened one (an error before loading); then
    leaves the process group, and ends launch_local's `procs` (at once when
    the pipeline is lost: a rank that stopped answering would never end).
    Every rank's report, by rank."""
    pipe = _OPEN[0] if _OPEN else None
    failed = False
    try:
        return pipe.close() if pipe else [r for r in stop_ranks(rank) if r is not None]
    except RuntimeError:
        # A rank that failed has gone (and said why): its sockets are closed.
        failed = True
        return []
    finally:
        _OPEN.clear()
        close_group()
        reap(procs, 0 if failed or (pipe and pipe.broken) else 60)


def reap(procs: Sequence[Any], grace_s: float) -> None:
    """Joins launch_local's ranks, killing those still running after
    `grace_s` seconds (SIGKILL: a stopped process ignores SIGTERM until it
    is resumed)."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(30)


class _Worker:
    """A rank past 0's messages: every wait bounded by `wait` (the first
    one by the time rank 0 may take to load as well), and gloo's error, a
    previous rank gone or silent, said as PipelineLost in one line."""

    def __init__(self, rank: Rank, timeout_s: float):
        self.rank = rank
        self.wait = worker_wait(timeout_s)
        self.first = True
        self.sends = _Sends()

    def recv(self, t: torch.Tensor, tag: int) -> None:
        wait = self.wait + _LOAD if self.first else self.wait
        with self.lost(wait):
            _recv(t, self.rank.rank - 1, tag, wait)
        self.first = False

    def send(self, dst: int, tag: int, *tensors: torch.Tensor) -> None:
        with self.lost(self.wait):
            self.sends.add(dst, tag, *tensors)

    def flush(self) -> None:
        """Waits for the sends in flight (the next rank is busy with the
        last step's)."""
        with self.lost(self.wait):
            self.sends.wait(self.wait)

    @contextlib.contextmanager
    def lost(self, wait: timedelta) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:
            if isinstance(e, PipelineLost):
                raise
            me = f"pipeline rank {self.rank.rank}"
            if _timed_out(e):
                raise PipelineLost(
                    f"{me}: nothing from rank 0 or the ranks before it within "
                    f"{wait.total_seconds():g} s (--pipeline-timeout-s and a heartbeat); "
                    "giving up"
                ) from None
            raise PipelineLost(f"{me}: lost rank 0 or a neighbour: {_gloo_line(e)}") from None


def serve(stage: StageModel, timeout_s: float = DEFAULT_STEP_TIMEOUT_S) -> None:
    """A rank past 0: runs its stage on what the previous rank sends until
    rank 0 closes the pipeline, then reports to rank 0. Raises
    PipelineLost when the previous rank goes silent for longer than
    `timeout_s` (--pipeline-timeout-s) and a heartbeat, or goes away."""
    rank = stage.rank
    nxt = rank.rank + 1
    io = _Worker(rank, timeout_s)
    try:
        while True:
            header = torch.empty(5, dtype=torch.long)
            io.recv(header, _HEADER)
            op, n, start, logits, dtype = (int(x) for x in header)
            if op == _STOP:
                io.flush()
                if not rank.last:
                    io.send(nxt, _HEADER, header)
                    io.flush()
                break
            if op == _PING:
                if rank.last:
                    with io.lost(io.wait):
                        _answer(None, None, io.wait)
                else:
                    io.flush()
                    io.send(nxt, _HEADER, header)
                continue
            if op in (_OPEN_SLOTS, _SLOTS, _FAILED):
                _serve_slots(stage, header, io)
                continue
            h = torch.empty(1, n, stage.dim, dtype=_DTYPES[dtype])
            io.recv(h, _HIDDEN)
            out = stage.run(h, torch.arange(start, start + n), bool(logits))
            if rank.last:
                if logits:
                    io.send(0, _LOGITS, out.reshape(1, -1).float().contiguous())
                    io.flush()
                continue
            io.flush()  # one step in flight: the next rank is busy with the last one
            io.send(nxt, _HEADER, header)
            io.send(nxt, _HIDDEN, out.contiguous())
        with io.lost(io.wait):
            _send_report(stage.report(), io.wait)
    finally:
        close_group()


def _serve_slots(stage: StageModel, header: torch.Tensor, io: _Worker) -> None:
    """One slots message on a rank past 0 (its header received): opening
    the slots, a step, or an earlier stage's failure, which is passed on
    to the last rank, which answers rank 0 either way."""
    rank = stage.rank
    op, n, n_entries, hidden, dtype = (int(x) for x in header)
    out: torch.Tensor | None = None
    table = torch.empty(0)
    failed = None
    if op == _FAILED:
        msg = torch.empty(n, dtype=torch.uint8)
        io.recv(msg, _MESSAGE)
        failed = bytes(msg.tolist()).decode(errors="replace")
    elif op == _OPEN_SLOTS:
        try:
            stage.open_slots(n)
        except Exception as e:
            failed = f"rank {rank.rank}: {type(e).__name__}: {e}"
    else:
        table = torch.empty(n_entries, 4, dtype=torch.long)
        io.recv(table, _ENTRIES)
        h = torch.empty(1, n, stage.dim, dtype=_DTYPES[dtype])
        io.recv(h, _HIDDEN)
        try:
            out = stage.run_slots(h, table, bool(hidden))
        except Exception as e:
            # Said here (the operator's log) and to rank 0, which fails the step.
            log.exception("pipeline rank %d: a slots step failed", rank.rank)
            failed = f"rank {rank.rank}: {type(e).__name__}: {e}"
    if rank.last:
        with io.lost(io.wait):
            _answer(out, failed, io.wait)
        return
    nxt = rank.rank + 1
    io.flush()
    if failed is not None:
        msg = _message(failed)
        io.send(nxt, _HEADER, _header(_FAILED, msg.numel(), 0, False, torch.float32))
        io.send(nxt, _MESSAGE, msg)
    elif op == _OPEN_SLOTS:
        io.send(nxt, _HEADER, header)
    else:
        assert out is not None
        io.send(nxt, _HEADER, header)
        io.send(nxt, _ENTRIES, table)
        io.send(nxt, _HIDDEN, out.contiguous())


def describe(reports: Sequence[dict[str, Any]]) -> list[str]:
    """One line per rank: its layers, what it holds and its peak RSS."""
    mib = 1 << 20
    return [
        f"pipeline rank {r['rank']}: layers {r['layers'][0]}-{r['layers'][1] - 1}, weights "
        f"{r['weight_bytes'] / mib:.1f} MiB, kv cache {r['kv_cache_bytes'] / mib:.1f} MiB, "
        f"masks {r['buffer_bytes'] / mib:.1f} MiB, peak rss {r['peak_rss_bytes'] / mib:.0f} MiB"
        for r in reports
    ]


# --- one host, without torchrun -------------------------------------------------------


def _rank_main(target: Callable[[], Any], env: dict[str, str]) -> None:
    """A rank launch_local started: joins through rank 0's store (as rank 0
    does, so both see the same keys), then runs `target`."""
    os.environ.update(env)
    rank = rank_from_env(int(env["WORLD_SIZE"]))
    init(rank, store_client(env["MASTER_ADDR"], int(env["MASTER_PORT"]), rank.world))
    target()


def master_store(host: str, world: int, timeout: timedelta = _START) -> Any:
    """Rank 0's TCP store for `world` ranks, listening on `host` only (torch's
    own listens on every interface) at a port the kernel picks."""
    import socket

    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(128)
        store = dist.TCPStore(
            host,
            sock.getsockname()[1],
            world,
            is_master=True,
            timeout=timeout,
            wait_for_workers=False,
            master_listen_fd=sock.fileno(),
        )
    except BaseException:
        sock.close()
        raise
    # The store owns the socket now; this object must not close it.
    sock.detach()
    return store


def store_client(host: str, port: int, world: int) -> Any:
    """A rank's connection to rank 0's `master_store`, which it waits for as
    long as rank 0 may take to start."""
    import torch.distributed as dist

    return dist.TCPStore(host, port, world, is_master=False, timeout=_START)


def launch_local(world: int, target: Callable[[], Any]) -> tuple[Rank, list[Any]]:
    """Starts ranks 1..world-1 of a one-host pipeline as new processes
    (spawned: a fresh interpreter each), each running `target` with
    torchrun's environment, and makes this process rank 0. Traffic stays
    on the loopback interface. Returns rank 0 and the processes, to join
    after rank 0 is done."""
    host = "127.0.0.1"
    store = master_store(host, world)
    common = {
        "MASTER_ADDR": host,
        "MASTER_PORT": str(store.port),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    }
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for r in range(1, world):
        env = {**common, "RANK": str(r), "LOCAL_RANK": str(r)}
        p = ctx.Process(target=_rank_main, args=(target, env), daemon=True)
        p.start()
        procs.append(p)
    # gloo reads its interface from the environment.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", common["GLOO_SOCKET_IFNAME"])
    rank = Rank(0, world, world)
    init(rank, store)
    return rank, procs
