"""Processes and ports for tests that start servers and pipeline ranks:
a free loopback port, a process's descendants, and which of them live; a
`torchchat server` (or torchrun's node of one) in a process of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

# `torchchat server ARGV` (the CLI hands its argv to server.main as this does).
SERVER = "import sys; from server.main import main; sys.exit(main(sys.argv[1:]))"
# `torchchat ARGV`.
CLI = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"


def child_env() -> dict[str, str]:
    """This environment with this test's Python path, for a child Python."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or
    None for a process that has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    """Live processes below `pid` (children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat(int(d.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (not gone, not a zombie)."""
    return {p for p in pids if (fields := _stat(p)) and fields[0] != "Z"}


def spawned(pid: int) -> set[int]:
    """The processes below `pid` that multiprocessing spawned to run a
    target (torchchat.pipeline.launch_local's ranks), not its helpers
    (the resource tracker)."""
    out = set()
    for p in descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.add(p)
    return out


def torchrun_ranks(pid: int) -> dict[int, int]:
    """{RANK: pid} of the ranks below `pid` (a torchrun) that torchrun
    started, from their environment."""
    out = {}
    for p in descendants(pid):
        try:
            env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"TORCHELASTIC_RUN_ID" not in b"\0".join(k.split(b"=", 1)[0] for k in env):
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[len(b"RANK=") :])] = p
    return out


class Served:
    """A command that serves HTTP on 127.0.0.1:`port` (`torchchat server`,
    or a torchrun that runs one), in a process of its own whose output goes
    to `log`; stop() leaves none of its processes behind."""

    def __init__(self, cmd: list[str], port: int, log: Path):
        self.port = port
        self.log: IO[str] = open(log, "w+")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=child_env()
        )

    @classmethod
    def server(cls, argv: list[str], log: Path) -> Served:
        """`torchchat server ARGV --port <free port>`."""
        port = free_port()
        return cls([sys.executable, "-c", SERVER, *argv, "--port", str(port)], port, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> int | None:
        """/health's status, None while nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def wait_healthy(self, timeout_s: float = 180) -> float:
        """Seconds until /health answers 200; RuntimeError, with the output,
        when the process ends or the time runs out first."""
        start = time.monotonic()
        while self.health() != 200:
            if self.proc.poll() is not None or time.monotonic() - start > timeout_s:
                raise RuntimeError(f"the server did not come up:\n{self.output()}")
            time.sleep(0.3)
        return time.monotonic() - start

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            for p in descendants(self.proc.pid):
                send(p, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def send(pid: int, sig: int) -> None:
    """os.kill(pid, sig), for a process that may have ended meanwhile."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
