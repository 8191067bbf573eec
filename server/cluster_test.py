"""`serve-cluster` on two Ray nodes of this machine (head and worker, each
its own `ray start`, on loopback: ray_harness), one replica of the tiny model on each:
prefix affinity keeps a conversation on the replica that holds its cache,
the API key holds at Ray's HTTP proxy, and a replica killed under 16
streaming clients leaves no hung or corrupt request, is replaced, and then
every request succeeds. Last, the app redeployed with --routing pow2 and
autoscaling between 1 and 2 replicas gives the same answers, starts at 1
replica, scales up to 2 under load and back down to 1 when idle.

Every address is on loopback; each request has a timeout and each loop a
bound. Teardown ends only the processes this test's `ray start` spawned
(they carry its tag in their environment), never another user's Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import httpx2 as httpx

from server import cluster
from server.ray_harness import LocalRay, free_ports
from testing import tiny_model

KEY = "s3cret"
WORDS = "quick brown fox jumps over the lazy dog pack my box with five dozen liquor jugs".split()
PROMPTS = [" ".join(WORDS[i % 7 : i % 7 + 2 + i % 9]) for i in range(16)]
MAX_TOKENS = 128


def replica_pids(ray: LocalRay) -> set[int]:
    return {p for p, cmd in ray.processes().items() if "ServeReplica:torchchat:Replica" in cmd}


def cpu_ticks(pid: int) -> int:
    """User + system time of a process (and its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class ClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = os.environ.get("TEST_TMPDIR", tempfile.gettempdir())
        cls.tmp = tempfile.mkdtemp(dir=base)
        cls.ckpt = str(tiny_model.write_checkpoint(os.path.join(cls.tmp, "tiny")))
        # Autoscaling's load reports every second, not every 10 (test_4).
        env = {
            "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        }
        cls.ray = LocalRay(nodes=2, cpus=2, env=env)
        cls.address = cls.ray.address
        try:
            (cls.port,) = free_ports(1)
            cls.url = cls.deploy("--replicas", "2")
        except BaseException:
            cls.stop_cluster()
            raise
        cls.client = httpx.Client(
            base_url=f"http://127.0.0.1:{cls.port}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=httpx.Timeout(60, connect=10),
        )

    @classmethod
    def deploy(cls, *flags: str) -> str:
        argv = [
            "--checkpoint-path", cls.ckpt, "--compile", "none", "--quiet",
            "--parallel", "4", "--api-key", KEY,
            "--address", cls.address, "--port", str(cls.port),
            "--max-replicas-per-node", "1", *flags,
        ]  # fmt: skip
        args = cluster.build_parser().parse_args(argv)
        cluster.check(args)
        _, replica_argv = cluster.split_argv(argv)
        start = time.monotonic()
        url = cluster.deploy(args, replica_argv)
        print(f"deployed {flags} in {time.monotonic() - start:.1f} s", file=sys.stderr)
        return url

    @classmethod
    def stop_cluster(cls):
        try:
            cls.ray.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.stop_cluster()

    def complete(self, prompt: str) -> str:
        r = self.client.post(
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["choices"][0]["text"]

    def chat(self, messages: list[dict]) -> dict:
        r = self.client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0},
        )
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_1_api_key_at_the_proxy(self):
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as bare:
            r = bare.get("/v1/models")
            self.assertEqual(r.status_code, 401)
            self.assertEqual(r.json()["error"]["code"], "invalid_api_key")
            r = bare.post("/v1/completions", json={"model": "tiny", "prompt": "hi"})
            self.assertEqual(r.status_code, 401)
            self.assertEqual(bare.get("/health").status_code, 200)  # as the server: no key
        r = self.client.get("/v1/models")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json()["data"][0]["id"], "tiny")
        # Bad input is still the replica's one-line 400, through the front.
        r = self.client.post("/v1/completions", json={"model": "tiny", "prompt": 3})
        self.assertEqual(r.status_code, 400)
        self.assertIn("prompt", r.json()["error"]["message"])

    def test_2_prefix_affinity(self):
        """Each conversation's later turns reuse the KV cache of its earlier
        ones: they reach the replica that served them."""
        cached = prompt = 0
        for c in range(6):
            messages = [
                {"role": "system", "content": f"conversation {c}: " + " ".join(WORDS[c:])},
                {"role": "user", "content": PROMPTS[c]},
            ]
            for turn in range(3):
                r = self.chat(messages)
                usage = r["usage"]
                if turn:
                    prompt += usage["prompt_tokens"]
                    cached += usage["prompt_tokens_details"]["cached_tokens"]
                    self.assertGreater(
                        usage["prompt_tokens_details"]["cached_tokens"], 0, (c, turn)
                    )
                messages += [
                    {"role": "assistant", "content": r["choices"][0]["message"]["content"]},
                    {"role": "user", "content": PROMPTS[c + turn + 1]},
                ]
        print(f"prefix hit rate of later turns: {cached / prompt:.0%}", file=sys.stderr)

    def test_3_replica_killed_under_load(self):
        before = replica_pids(self.ray)
        self.assertEqual(len(before), 2, self.ray.processes())
        expected = [self.complete(p) for p in PROMPTS]
        results: list[tuple[str, int, str, dict | None]] = [("none", 0, "", None)] * 16
        first_token = threading.Semaphore(0)

        def stream(i: int) -> None:
            text, error, outcome = "", None, "cut"
            body = {
                "model": "tiny",
                "prompt": PROMPTS[i],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }
            try:
                with self.client.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        r.read()
                        results[i] = ("status", r.status_code, "", r.json())
                        return
                    for line in r.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[len("data: ") :]
                        if data == "[DONE]":
                            outcome = "done"
                            break
                        event = json.loads(data)
                        if "error" in event:
                            outcome, error = "error", event
                            break
                        if not text:
                            first_token.release()
                        text += event["choices"][0]["text"]
            except httpx.HTTPError as e:
                outcome = f"transport: {e!r}"
            results[i] = (outcome, 200, text, error)

        ticks = {p: cpu_ticks(p) for p in before}
        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        for _ in range(6):  # a few streams are decoding
            self.assertTrue(first_token.acquire(timeout=60), "no stream started")
        # The replica that is decoding more: it has streams to cut.
        victim = max(before, key=lambda p: cpu_ticks(p) - ticks[p])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 90
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "a request hung")

        retryable = 0
        for i, (outcome, status, text, error) in enumerate(results):
            if outcome == "done":
                self.assertEqual(text, expected[i], f"client {i}: corrupt text")
            elif outcome == "status":
                self.assertEqual(status, 503, (i, error))
                self.assertEqual(error["error"]["code"], "replica_unavailable")
                retryable += 1
            elif outcome == "error":
                self.assertEqual(error["error"]["code"], "replica_unavailable", (i, error))
                self.assertTrue(expected[i].startswith(text), f"client {i}: corrupt text")
                retryable += 1
            else:
                self.fail(f"client {i}: {outcome}")
        # The kill really hit requests in flight.
        self.assertGreater(retryable, 0, results)
        print(f"{16 - retryable} of 16 completed, {retryable} got a retryable 503", file=sys.stderr)

        # Serve replaces the replica.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = replica_pids(self.ray)
            if len(now) == 2 and victim not in now and self.running() == 2:
                break
            time.sleep(0.5)
        else:
            self.fail(f"the replica was not replaced: {replica_pids(self.ray)}")
        # Then every request succeeds, and gives what it gave before.
        for _ in range(2):
            threads_out: list[str | None] = [None] * 16

            def one(i: int) -> None:
                threads_out[i] = self.complete(PROMPTS[i])

            ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(16)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=90)
            self.assertEqual(threads_out, expected)

    def test_4_pow2_autoscaled(self):
        expected = [self.complete(p) for p in PROMPTS[:8]]
        from ray import serve

        serve.delete("torchchat")
        self.deploy(
            "--routing", "pow2", "--min-replicas", "1", "--max-replicas", "2",
            "--upscale-delay-s", "1", "--downscale-delay-s", "2",
        )  # fmt: skip
        # pow2: Ray's proxy straight to the replicas' app, key and all.
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as bare:
            self.assertEqual(bare.get("/v1/models").status_code, 401)
        self.assertEqual(self.complete(PROMPTS[0]), expected[0])
        # Deployed anew, autoscaling starts at --min-replicas.
        self.wait_running(1, 60)
        # 8 clients in a loop: 8 ongoing requests against a target of 4 (the
        # replica's --parallel) a replica: up to --max-replicas.
        stop = threading.Event()
        results: list[list[tuple[int, str]]] = [[] for _ in range(8)]

        def load(i: int) -> None:
            body = {"model": "tiny", "prompt": PROMPTS[i], "max_tokens": MAX_TOKENS}
            body |= {"temperature": 0, "ignore_eos": True}
            deadline = time.monotonic() + 150
            while not stop.is_set() and time.monotonic() < deadline:
                r = self.client.post("/v1/completions", json=body)
                text = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text
                results[i].append((r.status_code, text))

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        try:
            self.wait_running(2, 120)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        for i, done in enumerate(results):
            self.assertTrue(done, f"client {i} finished no request")
            for status, text in done:
                self.assertEqual((status, text), (200, expected[i]), f"client {i}")
        # Idle again: back down once the look-back window's average falls.
        self.wait_running(1, 120)
        self.assertEqual(self.complete(PROMPTS[1]), expected[1])

    def wait_running(self, n: int, timeout: float) -> None:
        start = time.monotonic()
        while self.running() != n:
            if time.monotonic() - start > timeout:
                self.fail(f"{self.running()} replicas running after {timeout} s, not {n}")
            time.sleep(0.5)
        print(f"{n} replicas running after {time.monotonic() - start:.1f} s", file=sys.stderr)

    def running(self) -> int:
        from ray import serve

        app = serve.status().applications["torchchat"]
        return app.deployments["Replica"].replica_states.get("RUNNING", 0)


if __name__ == "__main__":
    unittest.main()
