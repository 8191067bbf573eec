"""`torchchat server --pipeline-parallel 2` on a tiny 4-layer F32 GGUF, started
as a user starts it, in a process of its own (the server spawns rank 1 itself, both on 127.0.0.1 /
lo): greedy completions, chats and embeddings through the HTTP API are a
one-process server's, alone and 4 at once (batched across the ranks); a
client that leaves mid-stream and bad requests leave the ranks serving;
SIGTERM stops every rank and leaves no process behind.

Every request has a timeout and every loop a bound.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GLOO_SOCKET_IFNAME"] = "lo"

import httpx2 as httpx
import torch

from server.harness import Running, engine_for
from testing import tiny_model
from testing.procs import Served, alive, descendants

PROMPTS = [" ".join(tiny_model.TEXT[i : i + 1 + i % 4]) for i in range(4)]
# Long enough for micro-batches of 32 through the stages.
LONG = " ".join(tiny_model.TEXT[:7])
MAX_TOKENS = 24


class PipelineServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = Path(cls.tmp.name)
        ckpt = tiny_model.write_checkpoint(d / "tiny", n_layers=4)
        # F32: the quantized kernels round decode rows (under 32) to int8
        # and larger steps not, so which requests share a step (4 at once,
        # or a prompt's cached prefix) would move ids in one process too.
        # The quantized stages are //torchchat:pipeline_test's.
        gguf = tiny_model.write_gguf(ckpt, d / "tiny.gguf", ("F32",), "F32", "F32")
        model = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        model += ["--compile", "none", "--parallel", "4", "--model-id", "tiny"]
        cls.server = Served.server([*model, "--pipeline-parallel", "2"], d / "server.log")
        cls.proc = cls.server.proc
        # The reference: one process, at the ranks' one thread each.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
        cls.one = Running(*engine_for([*model, "--quiet"]))
        cls.client = httpx.Client(base_url=cls.server.url, timeout=60)
        cls.ref = httpx.Client(base_url=cls.one.url, timeout=60)
        try:
            cls.server.wait_healthy()
        except RuntimeError:
            cls.tearDownClass()
            raise

    @classmethod
    def output(cls) -> str:
        return cls.server.output()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.client.close()
        cls.ref.close()
        cls.one.close()
        cls.tmp.cleanup()

    def complete(self, client: httpx.Client, prompt: str, **kw) -> dict:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        r = client.post("/v1/completions", json={**body, "ignore_eos": True, **kw})
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_1_one_process_answers(self):
        prompts = [*PROMPTS, LONG]
        want = [self.complete(self.ref, p)["choices"][0]["text"] for p in prompts]
        got = [self.complete(self.client, p)["choices"][0]["text"] for p in prompts]
        self.assertEqual(got, want)
        # 4 at once: one batched step of every slot through both ranks.
        together: list[str | None] = [None] * 4

        def one(i: int) -> None:
            together[i] = self.complete(self.client, prompts[i])["choices"][0]["text"]

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        self.assertEqual(together, want[:4])
        chat = {
            "model": "tiny",
            "messages": [{"role": "user", "content": LONG}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        want_chat = self.ref.post("/v1/chat/completions", json=chat).json()
        got_chat = self.client.post("/v1/chat/completions", json=chat).json()
        self.assertEqual(got_chat["choices"], want_chat["choices"])
        emb = {"model": "tiny", "input": [LONG, PROMPTS[0]]}
        want_emb = self.ref.post("/v1/embeddings", json=emb).json()["data"]
        got_emb = self.client.post("/v1/embeddings", json=emb).json()["data"]
        for w, g in zip(want_emb, got_emb):
            torch.testing.assert_close(
                torch.tensor(g["embedding"]), torch.tensor(w["embedding"]), atol=1e-4, rtol=1e-4
            )

    def test_2_disconnect_and_bad_requests(self):
        body = {"model": "tiny", "prompt": LONG, "max_tokens": 150, "temperature": 0}
        body |= {"ignore_eos": True, "stream": True}
        chunks = 0
        with self.client.stream("POST", "/v1/completions", json=body) as r:
            self.assertEqual(r.status_code, 200)
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    json.loads(line[len("data: ") :])
                    chunks += 1
                    if chunks == 3:
                        break  # the client leaves mid-stream
        self.assertEqual(chunks, 3)
        r = self.client.post("/v1/completions", json={"model": "tiny", "prompt": 3})
        self.assertEqual(r.status_code, 400)
        self.assertIn("prompt", r.json()["error"]["message"])
        r = self.client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "hi", "temperature": -1}
        )
        self.assertEqual(r.status_code, 400)
        r = self.client.post(
            "/v1/completions", json={"model": "tiny", "prompt": LONG * 100, "max_tokens": 1}
        )
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["code"], "context_length_exceeded")
        # The left stream's slot is free again, and the ranks still serve.
        deadline = time.monotonic() + 30
        while self.client.get("/health").json()["slots_busy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        health = self.client.get("/health").json()
        self.assertEqual((health["slots"], health["slots_busy"]), (4, 0))
        want = self.complete(self.ref, LONG)["choices"][0]["text"]
        self.assertEqual(self.complete(self.client, LONG)["choices"][0]["text"], want)

    def test_3_sigterm_stops_every_rank(self):
        ranks = descendants(self.proc.pid)
        self.assertTrue(ranks, "rank 1 is a child of the server")
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.assertIn(rc, (0, 130), self.output())
        deadline = time.monotonic() + 30
        while alive(ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(alive(ranks), set(), self.output())
        # Rank 0 stopped rank 1 and gathered what each held.
        self.assertIn("pipeline rank 1: layers 2-3", self.output())


if __name__ == "__main__":
    unittest.main()
