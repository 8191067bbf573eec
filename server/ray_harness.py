"""A Ray cluster of this machine for tests: nodes started as separate `ray
start` processes, every address on loopback, each node's ports drawn free,
the dashboard off, and this test's tag in every process it spawns, so that
teardown ends exactly those (never `ray stop`, which stops every Ray on the
machine)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from server.cluster import LOOPBACK_NODE

# Ray turns token auth on when a token sits in ~/.ray (another user of this
# machine may have made one), and then a worker node, in Bazel's sandbox,
# is refused by the head.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

TAG = "TORCHCHAT_CLUSTER_TEST"

# The nodes' address: cluster.LOOPBACK_NODE (127.0.0.1 is rewritten by Ray
# to the host's address on its route out).
NODE_IP = LOOPBACK_NODE

# Ports this process has handed out, a Ray node's worker range included: the
# kernel may hand a port inside a range out again as a "free" one, and Ray
# refuses a node whose ports overlap.
_taken: set[int] = set()


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in _taken and p not in ports:
            ports.append(p)
    _taken.update(ports)
    return ports


def ours(tag: str) -> dict[int, str]:
    """{pid: command line} of the live processes carrying the tag."""
    found = {}
    needle = f"{TAG}={tag}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(d.name)] = cmd.strip()
        except OSError:
            continue  # gone, or not ours to read
    return found


def node_args(temp: str, cpus: int) -> list[str]:
    # Worker ports: a small block above a free port (Ray takes a range),
    # reserved before the node's single ports are drawn.
    while True:
        (workers,) = free_ports(1)
        block = set(range(workers, min(workers + 40, 65535) + 1))
        if not block & _taken - {workers}:
            break
    _taken.update(block)
    nm, om, client, rt, metrics, agent, agent_grpc = free_ports(7)
    return [
        f"--node-ip-address={NODE_IP}",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--ray-client-server-port={client}",
        f"--runtime-env-agent-port={rt}",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--min-worker-port={workers}",
        f"--max-worker-port={min(workers + 40, 65535)}",
    ]


class LocalRay:
    """A head node and `nodes - 1` workers of `cpus` Ray CPUs each, every one
    its own `ray start` on 127.0.0.1, and this process connected to it as a
    driver. `env`: more environment for the nodes (and their workers)."""

    def __init__(self, nodes: int, cpus: int, env: dict[str, str] | None = None):
        self.tag = uuid.uuid4().hex
        base = os.environ.get("TEST_TMPDIR", tempfile.gettempdir())
        # Ray's unix sockets live under its temp dir, and a socket path has
        # at most 107 bytes: Bazel's TEST_TMPDIR is too deep for that.
        self.temp = tempfile.mkdtemp(prefix="tcray", dir=base if len(base) < 40 else "/tmp")
        full = dict(os.environ, **(env or {}))
        full[TAG] = self.tag
        full["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        ray_cli = [sys.executable, "-m", "server.ray_node", "start"]
        (gcs,) = free_ports(1)
        self.address = f"{NODE_IP}:{gcs}"
        try:
            head = ["--head", f"--port={gcs}", "--include-dashboard=false"]
            for args in [head] + [[f"--address={self.address}"]] * (nodes - 1):
                subprocess.run(
                    [*ray_cli, *args, *node_args(self.temp, cpus)],
                    env=full,
                    check=True,
                    timeout=120,
                    stdout=subprocess.DEVNULL,
                )
            import ray

            ray.init(address=self.address, _node_ip_address=NODE_IP, logging_level=logging.WARNING)
        except BaseException:
            self.stop()
            raise

    def processes(self) -> dict[int, str]:
        return ours(self.tag)

    def stop(self) -> None:
        try:
            import ray

            ray.shutdown()
        finally:
            # Only what this cluster's `ray start` spawned: TERM, then KILL.
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                for pid in ours(self.tag):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + wait
                while ours(self.tag) and time.monotonic() < deadline:
                    time.sleep(0.2)
            shutil.rmtree(self.temp, ignore_errors=True)
