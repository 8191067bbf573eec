"""`torchchat server --pipeline-parallel 2` under torchrun --max-restarts 1,
as the two-host recipe runs it (two torchrun nodes of one rank each, on
127.0.0.1): rank 1's process is killed mid-stream; the stream ends with
OpenAI's 503 error object, rank 0's server exits for torchrun to restart
every rank, and the server comes back on the same port, answering as
before the kill (the same greedy text).

Rank 1's torchrun restarts rank 1 by itself (its process failed); rank 0's
torchrun sees nothing fail (static rendezvous: it is not told of the other
node's restart) until rank 0's server exits on its lost pipeline, so a
server that stayed up with a lost pipeline fails this test.

Every request has a timeout and every loop a bound; traffic stays on
127.0.0.1 (gloo on lo).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GLOO_SOCKET_IFNAME"] = "lo"

import httpx2 as httpx

from server.harness import stream_error
from testing import tiny_model
from testing.procs import Served, alive, descendants, free_port, send, torchrun_ranks

TIMEOUT_S = 3
PROMPT = " ".join(tiny_model.TEXT[:3])
# Beside this test in the runfiles: //cli:torchrun.
TORCHRUN = Path(__file__).parent.parent / "cli" / "torchrun"


class PipelineRestartTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        d = Path(self.tmp.name)
        # A long context: the stream below is still running when rank 1 dies.
        ckpt = tiny_model.write_checkpoint(d / "tiny", n_layers=4, max_seq_len=2048)
        gguf = tiny_model.write_gguf(ckpt, d / "tiny.gguf")
        http, master = free_port(), str(free_port())
        argv = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        argv += ["--compile", "none", "--parallel", "2", "--model-id", "tiny"]
        argv += ["--pipeline-parallel", "2", "--pipeline-timeout-s", str(TIMEOUT_S)]
        argv += ["--port", str(http)]
        self.nodes = []
        for node in range(2):
            cmd = [str(TORCHRUN), "--nnodes", "2", "--node-rank", str(node)]
            cmd += ["--nproc-per-node", "1", "--max-restarts", "1"]
            cmd += ["--master-addr", "127.0.0.1", "--master-port", master]
            cmd += ["-m", "cli", "server", *argv]
            self.nodes.append(Served(cmd, http, d / f"node{node}.log"))
        self.server = self.nodes[0]
        self.client = httpx.Client(base_url=self.server.url, timeout=60)
        try:
            self.server.wait_healthy()
        except RuntimeError:
            self.tearDown()
            raise

    def output(self) -> str:
        return "\n".join(f"--- node {i}\n{n.output()}" for i, n in enumerate(self.nodes))

    def tearDown(self) -> None:
        for n in self.nodes:
            n.stop()
        self.client.close()
        self.tmp.cleanup()

    def complete(self) -> dict:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
        r = self.client.post("/v1/completions", json=body | {"ignore_eos": True})
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_killed_rank_is_rebuilt(self):
        want = self.complete()
        server_pid = torchrun_ranks(self.nodes[0].proc.pid)[0]
        rank1 = torchrun_ranks(self.nodes[1].proc.pid)
        self.assertEqual(set(rank1), {1}, self.output())
        stream = {"model": "tiny", "prompt": PROMPT, "max_tokens": 1900, "temperature": 0}
        stream |= {"ignore_eos": True, "stream": True}
        events, rest = [], []
        with self.client.stream("POST", "/v1/completions", json=stream) as r:
            self.assertEqual(r.status_code, 200)
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    events.append(json.loads(line[len("data: ") :]))
                    if len(events) == 3:
                        break
            killed = time.monotonic()
            send(rank1[1], signal.SIGKILL)
            rest.extend(line for line in lines if line.startswith("data: "))
        # The stream ends with OpenAI's error object, not [DONE].
        error = stream_error(self, rest)
        self.assertEqual(error["code"], "service_unavailable", error)
        self.assertIn("pipeline rank lost", error["message"])
        # Rank 0's server exits; torchrun restarts both ranks; the server
        # answers again on the same port.
        try:
            self.server.wait_healthy(180)
        except RuntimeError:
            self.fail(self.output())
        print(f"served again {time.monotonic() - killed:.1f} s after the kill", flush=True)
        self.assertIsNone(self.nodes[0].proc.poll(), self.output())
        self.assertNotEqual(torchrun_ranks(self.nodes[0].proc.pid).get(0), server_pid)
        self.assertIn("exiting so that torchrun restarts every rank", self.nodes[0].output())
        got = self.complete()
        self.assertEqual(got["choices"], want["choices"])
        self.assertEqual(got["usage"], want["usage"])
        # Both torchruns end on SIGTERM, leaving no rank behind.
        ranks = set()
        for n in self.nodes:
            ranks |= descendants(n.proc.pid)
            n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.proc.wait(60)
        deadline = time.monotonic() + 30
        while alive(ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(alive(ranks), set(), self.output())


if __name__ == "__main__":
    unittest.main()
