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

Launch: `torchrun` (its RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_WORLD_SIZE
environment), or `launch_local`, which starts the other ranks of one host
itself, on the loopback interface.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from torchchat.errors import UserError

if TYPE_CHECKING:
    from torchchat.model import Model

# Message tags between neighbouring ranks: a header, then the hidden
# states it describes; the last rank's logits to rank 0.
_HEADER, _HIDDEN, _LOGITS = 1, 2, 3
# header = [op, tokens, start position, logits wanted, dtype]
_RUN, _STOP = 1, 0
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Ranks wait for their neighbours between chat turns for as long as a user
# types; a dead peer ends the wait at once (its sockets close).
_TIMEOUT = timedelta(days=7)
# launch_local's ranks meet within this (each imports torch and ExecuTorch).
_START = timedelta(seconds=300)
# The GGUF kernels run 32 or more rows of a matmul as dequantized tiles and
# fewer (decode) with activations rounded to int8: chunks of at least 32
# compute as the whole prompt does.
DEFAULT_MICROBATCH = 32


class PipelineError(UserError):
    """A pipeline that cannot be set up as asked (one line for the user)."""


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


# This process's rank while it is in a process group.
_RANK: Rank | None = None


def init(rank: Rank, store: Any = None) -> None:
    """Joins the process group (env:// unless a store is given) and gives
    this rank its share of the host's cores."""
    import torch.distributed as dist

    global _RANK
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // max(1, rank.local_world)))
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
    init(rank)
    return rank


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

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works, self.tensors = [], []


def _header(op: int, n: int, start: int, logits: bool, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([op, n, start, int(logits), _DTYPES.index(dtype)], dtype=torch.long)


class Pipeline:
    """Rank 0's view of the whole pipeline: an LLMModel whose forward runs
    every stage and returns the last position's logits, [1, vocab]."""

    def __init__(self, stage: StageModel, microbatch: int = DEFAULT_MICROBATCH):
        if not stage.rank.first:
            raise ValueError("the Pipeline runs on rank 0")
        self.stage = stage
        self.rank = stage.rank
        self.microbatch = microbatch
        self.max_seq_length: int = stage.model.max_seq_length
        self.config = stage.model.config
        self.vocab_size: int = stage.model.config.vocab_size
        # Logits the last rank owes for a forward that was interrupted
        # (Ctrl-C) after its last chunk went out: received before stopping.
        self._owed = False
        _OPEN.append(self)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        sends = _Sends()
        chunks = microbatches(tokens.shape[1], self.microbatch)
        for i, (a, b) in enumerate(chunks):
            h = self.stage.run(tokens[:, a:b], input_pos[a:b]).contiguous()
            last = i == len(chunks) - 1
            sends.add(1, _HEADER, _header(_RUN, b - a, int(input_pos[a]), last, h.dtype))
            sends.add(1, _HIDDEN, h)
            self._owed = last
        logits = self._logits()
        sends.wait()
        return logits

    def _logits(self) -> torch.Tensor:
        import torch.distributed as dist

        logits = torch.empty(1, self.vocab_size, dtype=torch.float32)
        dist.recv(logits, self.rank.world - 1, tag=_LOGITS)
        self._owed = False
        return logits

    def close(self) -> list[dict[str, Any]]:
        """Stops every rank; what each held and its peak RSS, by rank."""
        _OPEN.remove(self)
        if self._owed:
            self._logits()
        return stop_ranks(self.rank, self.stage.report())


# Pipelines this process opened and has not closed (shutdown closes them).
_OPEN: list[Pipeline] = []


def stop_ranks(rank: Rank, report: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rank 0: tells every other rank to stop, and gathers their reports
    (rank 0's own is `report`, None when it built nothing)."""
    import torch.distributed as dist

    dist.send(_header(_STOP, 0, 0, False, torch.float32), 1, tag=_HEADER)
    reports: list[Any] = [None] * rank.world
    dist.gather_object(report, reports, dst=0)
    return reports


def shutdown(rank: Rank) -> list[dict[str, Any]]:
    """Rank 0, at the end of a command: closes its pipeline, or stops the
    other ranks when it never opened one (an error before loading); then
    leaves the process group. Every rank's report, by rank."""
    try:
        return _OPEN[0].close() if _OPEN else [r for r in stop_ranks(rank) if r is not None]
    except RuntimeError:
        # A rank that failed has gone (and said why): its sockets are closed.
        return []
    finally:
        _OPEN.clear()
        close_group()


def serve(stage: StageModel) -> None:
    """A rank past 0: runs its stage on what the previous rank sends until
    rank 0 closes the pipeline, then reports to rank 0."""
    import torch.distributed as dist

    rank = stage.rank
    prev, nxt = rank.rank - 1, rank.rank + 1
    sends = _Sends()
    while True:
        header = torch.empty(5, dtype=torch.long)
        dist.recv(header, prev, tag=_HEADER)
        op, n, start, logits, dtype = (int(x) for x in header)
        if op == _STOP:
            sends.wait()
            if not rank.last:
                dist.send(header, nxt, tag=_HEADER)
            break
        h = torch.empty(1, n, stage.dim, dtype=_DTYPES[dtype])
        dist.recv(h, prev, tag=_HIDDEN)
        out = stage.run(h, torch.arange(start, start + n), bool(logits))
        if rank.last:
            if logits:
                dist.send(out.reshape(1, -1).float().contiguous(), 0, tag=_LOGITS)
            continue
        sends.wait()  # one step in flight: the next rank is busy with the last one
        sends.add(nxt, _HEADER, header)
        sends.add(nxt, _HIDDEN, out.contiguous())
    dist.gather_object(stage.report(), None, dst=0)
    close_group()


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
    import torch.distributed as dist

    os.environ.update(env)
    rank = rank_from_env(int(env["WORLD_SIZE"]))
    port = int(env["MASTER_PORT"])
    store = dist.TCPStore(env["MASTER_ADDR"], port, rank.world, is_master=False, timeout=_START)
    init(rank, store)
    target()


def launch_local(world: int, target: Callable[[], Any]) -> tuple[Rank, list[Any]]:
    """Starts ranks 1..world-1 of a one-host pipeline as new processes
    (spawned: a fresh interpreter each), each running `target` with
    torchrun's environment, and makes this process rank 0. Traffic stays
    on the loopback interface. Returns rank 0 and the processes, to join
    after rank 0 is done."""
    import torch.distributed as dist

    host = "127.0.0.1"
    # Port 0: the store picks a free port, with no race for it.
    store = dist.TCPStore(host, 0, world, is_master=True, timeout=_START, wait_for_workers=False)
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
