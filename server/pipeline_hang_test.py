"""`torchchat server --pipeline-parallel 2 --pipeline-timeout-s 3` whose rank 1
stops answering (SIGSTOP: a hung rank, not a dead one, so no socket closes):
the requests in flight end with OpenAI's 503 error within the timeout (a
stream with an error event), /health answers 503, a new request is refused
with 503 at once, the server keeps answering, and SIGTERM still ends every
rank, the stopped one too.

Every request has a timeout and every loop a bound; traffic stays on
127.0.0.1 (gloo on lo).
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

from server.harness import stream_error
from testing import tiny_model
from testing.procs import Served, alive, spawned

TIMEOUT_S = 3
# How much later than the timeout a hung step may end on a loaded machine.
SLACK_S = 15
PROMPT = " ".join(tiny_model.TEXT[:3])


class PipelineHangTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        d = Path(self.tmp.name)
        # A long context: the stream below is still running when rank 1 stops.
        ckpt = tiny_model.write_checkpoint(d / "tiny", n_layers=4, max_seq_len=2048)
        gguf = tiny_model.write_gguf(ckpt, d / "tiny.gguf")
        argv = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        argv += ["--compile", "none", "--parallel", "4", "--model-id", "tiny"]
        argv += ["--pipeline-parallel", "2", "--pipeline-timeout-s", str(TIMEOUT_S)]
        self.server = Served.server(argv, d / "server.log")
        self.proc = self.server.proc
        self.client = httpx.Client(base_url=self.server.url, timeout=60)
        try:
            self.server.wait_healthy()
        except RuntimeError:
            self.tearDown()
            raise

    def output(self) -> str:
        return self.server.output()

    def tearDown(self) -> None:
        self.server.stop()
        self.client.close()
        self.tmp.cleanup()

    def test_a_stopped_rank_ends_requests_with_503(self):
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        r = self.client.post("/v1/completions", json=body)
        self.assertEqual(r.status_code, 200, r.text)
        ranks = spawned(self.proc.pid)
        self.assertEqual(len(ranks), 1, "rank 1 is the server's one spawned child")
        stream = body | {"max_tokens": 1900, "ignore_eos": True, "stream": True}
        url = f"{self.client.base_url}".rstrip("/")
        started = threading.Event()
        events: list[dict] = []
        rest: list[str] = []
        late: list[httpx.Response] = []

        def read_stream() -> None:
            # A thread of its own with its own client: if the server hangs,
            # the test fails on its bound instead of waiting with it.
            with httpx.Client(base_url=url, timeout=60) as c:
                with c.stream("POST", "/v1/completions", json=stream) as resp:
                    lines = resp.iter_lines()
                    for line in lines:
                        if line.startswith("data: {"):
                            events.append(json.loads(line[len("data: ") :]))
                            if len(events) == 3:
                                break
                    started.set()
                    rest.extend(line for line in lines if line.startswith("data: "))

        def post_late() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                late.append(c.post("/v1/completions", json=body))

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        self.assertTrue(started.wait(60), "the stream did not start")
        stopped = time.monotonic()
        for p in ranks:
            os.kill(p, signal.SIGSTOP)
        # A request that arrives while the rank hangs is in flight too.
        t = threading.Thread(target=post_late, daemon=True)
        t.start()
        reader.join(TIMEOUT_S + SLACK_S)
        ended = time.monotonic() - stopped
        self.assertFalse(reader.is_alive(), "the stream hangs with the stopped rank")
        t.join(TIMEOUT_S + SLACK_S)
        # The stream ends with OpenAI's error object, not [DONE].
        self.assertLess(ended, TIMEOUT_S + SLACK_S)
        self.assertEqual(len(events), 3)
        error = stream_error(self, rest)
        self.assertEqual(error["code"], "service_unavailable", error)
        self.assertIn("--pipeline-timeout-s", error["message"])
        self.assertEqual(len(late), 1, "the request that came during the hang did not end")
        self.assertEqual(late[0].status_code, 503, late[0].text)
        self.assertEqual(late[0].json()["error"]["code"], "service_unavailable")
        # The server keeps answering: unhealthy, and quick 503s for new work.
        health = self.client.get("/health")
        self.assertEqual(health.status_code, 503)
        self.assertEqual(health.json()["error"]["code"], "unhealthy")
        self.assertIn("pipeline rank lost", health.json()["error"]["message"])
        start = time.monotonic()
        for path, req in [
            ("/v1/completions", body),
            (
                "/v1/chat/completions",
                {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            ),
            ("/v1/embeddings", {"model": "tiny", "input": PROMPT}),
        ]:
            r = self.client.post(path, json=req)
            self.assertEqual(r.status_code, 503, f"{path}: {r.text}")
            self.assertEqual(r.json()["error"]["code"], "service_unavailable")
        self.assertLess(time.monotonic() - start, TIMEOUT_S)
        self.assertEqual(self.client.get("/v1/models").status_code, 200)
        # SIGTERM ends the server and the stopped rank, without waiting on it.
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.assertIn(rc, (0, 130), self.output())
        deadline = time.monotonic() + 30
        while alive(ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(alive(ranks), set(), self.output())


if __name__ == "__main__":
    unittest.main()
