"""`serve-cluster --pipeline-parallel 2` on two Ray nodes of this machine
(head and worker, each its own `ray start`, on loopback: ray_harness): one replica of a
tiny 4-layer F32 GGUF whose ranks Ray places one per node
(--pipeline-placement strict-spread), the replica rank 0 and rank 1 a Ray
actor. Greedy completions and a chat are one process's; rank 1's actor
killed mid-stream ends the stream with the 503 error event, Serve replaces
the replica (new processes for both ranks), and the answers are as before.

Every address is on loopback (gloo on lo), checked on the ranks' sockets; each request has a timeout and
each loop a bound. Teardown ends only the processes this test's `ray
start` spawned.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import tempfile
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import httpx2 as httpx
import psutil
import torch

from server import cluster
from server.harness import Running, engine_for, stream_error
from server.ray_harness import LocalRay, free_ports
from testing import tiny_model
from testing.procs import descendants
from torchchat.errors import UserError

PROMPTS = [" ".join(tiny_model.TEXT[i : i + 2 + i]) for i in range(2)]
# Long enough for micro-batches of 32 through the stages.
LONG = " ".join(tiny_model.TEXT[:7])
MAX_TOKENS = 16


def loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    return a.is_loopback


def cluster_args(*flags: str) -> None:
    cluster.check(cluster.build_parser().parse_args(list(flags)))


class PipelineClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = os.environ.get("TEST_TMPDIR", tempfile.gettempdir())
        cls.tmp = tempfile.mkdtemp(dir=base)
        d = Path(cls.tmp)
        # A long context: the stream below is still running when rank 1 dies.
        ckpt = tiny_model.write_checkpoint(d / "tiny", n_layers=4, max_seq_len=2048)
        # F32, as //server:pipeline_test's: ids that do not hang on how a
        # quantized kernel rounds a step of some size.
        gguf = tiny_model.write_gguf(ckpt, d / "tiny.gguf", ("F32",), "F32", "F32")
        model = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        model += ["--compile", "none", "--parallel", "2", "--model-id", "tiny"]
        # The reference: one process at the ranks' one thread (a Ray CPU each).
        torch.set_num_threads(1)
        cls.one = Running(*engine_for([*model, "--quiet"]))
        cls.ref = httpx.Client(base_url=cls.one.url, timeout=60)
        try:
            cls.ray = LocalRay(nodes=2, cpus=2)
        except BaseException:
            cls.ref.close()
            cls.one.close()
            raise
        try:
            (port,) = free_ports(1)
            argv = [*model, "--quiet", "--pipeline-parallel", "2", "--pipeline-timeout-s", "3"]
            argv += ["--address", cls.ray.address, "--port", str(port), "--replicas", "1"]
            argv += ["--routing", "pow2", "--pipeline-placement", "strict-spread"]
            args = cluster.build_parser().parse_args(argv)
            cluster.check(args)
            start = time.monotonic()
            cluster.deploy(args, cluster.split_argv(argv)[1])
            print(f"deployed in {time.monotonic() - start:.1f} s", flush=True)
        except BaseException:
            cls.stop()
            raise
        cls.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    @classmethod
    def stop(cls):
        try:
            cls.ray.stop()
        finally:
            cls.ref.close()
            cls.one.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.stop()

    def ranks(self) -> tuple[set[int], set[int]]:
        """(the replicas' pids, rank 1's actors' pids): one of each, but two
        while Serve replaces a replica."""
        procs = self.ray.processes()
        replica = {p for p, cmd in procs.items() if "ServeReplica:torchchat:Replica" in cmd}
        stage = {p for p, cmd in procs.items() if cmd.startswith("ray::PipelineStage")}
        return replica, stage

    def raylets(self) -> list[int]:
        return [p for p, cmd in self.ray.processes().items() if "raylet/raylet" in cmd]

    def complete(self, client: httpx.Client, prompt: str) -> dict:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        r = client.post("/v1/completions", json=body | {"ignore_eos": True})
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["choices"]

    def chat(self, client: httpx.Client) -> dict:
        messages = [{"role": "user", "content": PROMPTS[0]}]
        body = {"model": "tiny", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        r = client.post("/v1/chat/completions", json=body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["choices"]

    def test_0_refused(self):
        with self.assertRaisesRegex(UserError, "--max-replicas-per-node does not go"):
            cluster_args("--pipeline-parallel", "2", "--max-replicas-per-node", "1")
        with self.assertRaisesRegex(UserError, "positive --replica-cpus"):
            cluster_args("--pipeline-parallel", "2", "--replica-cpus", "0")

    def test_1_answers_of_one_process(self):
        (replica,), (stage,) = self.ranks()
        # strict-spread: each rank on a node of its own (its raylet's child).
        nodes = [descendants(r) for r in self.raylets()]
        self.assertEqual(len(nodes), 2)
        self.assertEqual(sorted([replica in n for n in nodes]), [False, True])
        self.assertEqual(sorted([stage in n for n in nodes]), [False, True])
        self.assertNotEqual([replica in n for n in nodes], [stage in n for n in nodes])
        # Every connection of both ranks (gloo's, the store's, Ray's) has
        # both ends on loopback: the host's other interface (the address Ray's
        # get_node_ip_address() gives a worker) is never used.
        for pid in (replica, stage):
            conns = [c for c in psutil.Process(pid).net_connections("inet") if c.raddr]
            ends = {a.ip for c in conns for a in (c.laddr, c.raddr)}
            self.assertTrue(conns and all(map(loopback, ends)), (pid, ends))
        for prompt in [*PROMPTS, LONG]:
            self.assertEqual(self.complete(self.client, prompt), self.complete(self.ref, prompt))
        self.assertEqual(self.chat(self.client), self.chat(self.ref))

    def test_2_lost_rank_replaces_the_replica(self):
        want = self.complete(self.ref, LONG)
        (replica,), (stage,) = self.ranks()
        body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 1900, "temperature": 0}
        body |= {"ignore_eos": True, "stream": True}
        events, rest = 0, []
        with self.client.stream("POST", "/v1/completions", json=body) as r:
            self.assertEqual(r.status_code, 200)
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    events += 1
                    if events == 3:
                        break
            killed = time.monotonic()
            os.kill(stage, signal.SIGKILL)
            rest.extend(line for line in lines if line.startswith("data: "))
        # The stream ends with OpenAI's error object, not [DONE].
        error = stream_error(self, rest)
        self.assertEqual(error["code"], "service_unavailable", error)
        self.assertIn("pipeline rank lost", error["message"])
        (peer,) = re.findall(r"\[([0-9a-f.:]+)\]", error["message"])
        self.assertTrue(loopback(peer), error["message"])
        # Serve replaces the replica: both ranks are new processes, and it
        # answers as before.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            replicas, stages = self.ranks()
            if len(replicas) == len(stages) == 1 and not {replica, stage} & (replicas | stages):
                if self.running():
                    break
            time.sleep(0.5)
        else:
            self.fail(f"the replica was not replaced: {self.ranks()}")
        print(f"replaced {time.monotonic() - killed:.1f} s after the kill", flush=True)
        self.assertEqual(self.complete(self.client, LONG), want)

    def running(self) -> bool:
        from ray import serve

        app = serve.status().applications["torchchat"]
        return app.deployments["Replica"].replica_states.get("RUNNING", 0) == 1


if __name__ == "__main__":
    unittest.main()
