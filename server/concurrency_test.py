"""Continuous batching: many clients at once get what each gets alone; a
client that goes away frees its slot within one step; a full queue is 429."""

import os
import tempfile
import threading
import time
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import openai

from server.harness import Running, Slowed, engine_for
from testing import tiny_model

WORDS = "quick brown fox jumps over the lazy dog pack my box with five dozen liquor jugs".split()
# Different lengths, so slots sit at different positions in every step.
PROMPTS = [" ".join(WORDS[i % 7 : i % 7 + 2 + i % 9]) for i in range(16)]


class ConcurrencyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.ckpt = str(tiny_model.write_checkpoint(os.path.join(cls.tmp.name, "tiny")))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start(self, *flags):
        engine, config = engine_for(["--checkpoint-path", self.ckpt, "--quiet", *flags])
        server = Running(engine, config)
        self.addCleanup(server.close)
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
        return server, client, config.model_id

    def test_sixteen_clients_get_what_each_gets_alone(self):
        server, client, model = self.start("--parallel", "8", "--prefill-chunk", "4")

        def chat(prompt, **kw):
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, **kw
            )
            return r.choices[0].message.content

        alone = [chat(p, temperature=0) for p in PROMPTS]
        seeded_alone = chat(PROMPTS[3], temperature=0.9, seed=5)
        steps_before = server.engine.steps
        with ThreadPoolExecutor(17) as pool:
            seeded = pool.submit(chat, PROMPTS[3], temperature=0.9, seed=5)
            together = list(pool.map(lambda p: chat(p, temperature=0), PROMPTS))
        self.assertEqual(together, alone)
        self.assertEqual(seeded.result(), seeded_alone)
        # They really ran batched: some steps held several slots.
        sizes = list(server.engine.batcher.step_sizes)[-(server.engine.steps - steps_before) :]
        self.assertGreater(max(sizes), 4, sizes)

    def test_disconnect_frees_the_slot_within_one_step(self):
        server, client, model = self.start("--parallel", "2")
        engine = server.engine
        engine.batcher.model = Slowed(engine.batcher.model, 0.02)
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "fox"}],
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        got = 0
        for chunk in stream:
            got += 1
            if got == 4:
                break
        self.assertEqual(engine.busy(), 1)
        stream.close()
        deadline = time.monotonic() + 10
        while not engine.cancellations and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertEqual(len(engine.cancellations), 1, "the job was never cancelled")
        cancelled_at, left_at = engine.cancellations[0]
        self.assertLessEqual(left_at - cancelled_at, 1)
        deadline = time.monotonic() + 5
        while engine.busy() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertEqual(engine.busy(), 0)
        # The freed slot serves the next request.
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "fox"}], max_tokens=3
        )
        self.assertEqual(r.usage.completion_tokens, 3)

    def test_full_queue_is_429_and_the_server_recovers(self):
        server, client, model = self.start("--parallel", "1", "--max-queue", "1")
        engine = server.engine
        engine.batcher.model = Slowed(engine.batcher.model, 0.01)
        results = []

        def long_request():
            r = client.completions.create(model=model, prompt="fox", max_tokens=60, temperature=0)
            results.append(r.choices[0].text)

        threads = [threading.Thread(target=long_request) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while (engine.busy(), engine.queued()) != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertEqual((engine.busy(), engine.queued()), (1, 1))
        with self.assertRaises(openai.RateLimitError) as e:
            client.completions.create(model=model, prompt="fox", max_tokens=2)
        self.assertEqual(e.exception.code, "queue_full")
        for t in threads:
            t.join()
        self.assertEqual(len(results), 2)  # both the running and the queued one finished
        self.assertEqual(results[0], results[1])
        with urllib.request.urlopen(server.url + "/health") as r:
            self.assertEqual(r.status, 200)
        self.assertEqual(
            client.completions.create(
                model=model, prompt="fox", max_tokens=2
            ).usage.completion_tokens,
            2,
        )


class SlotsPackageTest(unittest.TestCase):
    """A .pt2 exported with --slots batches like the eager model."""

    def serve(self, *argv):
        engine, config = engine_for([*argv, "--quiet"])
        server = Running(engine, config)
        self.addCleanup(server.close)
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
        return server, client, config.model_id

    def test_clients_together_get_what_eager_gives_each_alone(self):
        pt2 = os.path.abspath(os.environ["TINY_SLOTS"])
        ckpt = os.path.join(os.path.dirname(pt2), "ckpt")
        eager = self.serve("--checkpoint-path", ckpt, "--max-seq-length", "64", "--parallel", "1")
        # More --parallel than the package has rows: it serves 4 at a time.
        batched = self.serve("--aoti-package-path", pt2, "--parallel", "8", "--prefill-chunk", "3")
        server = batched[0]
        self.assertEqual(server.engine.n_slots, 4)

        def complete(s, prompt):
            _, client, model = s
            r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
            return r.choices[0].text

        prompts = [" ".join(WORDS[i : i + 1 + i % 3]) for i in range(8)]
        alone = [complete(eager, p) for p in prompts]
        for s in (batched, self.default(ckpt)):
            server = s[0]
            steps_before = server.engine.steps
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(lambda p: complete(s, p), prompts))
            self.assertEqual(together, alone)
            sizes = list(server.engine.batcher.step_sizes)[-(server.engine.steps - steps_before) :]
            self.assertEqual(max(sizes), 4, sizes)

    def default(self, ckpt):
        """`torchchat server` as a user starts it: the model compiled on first
        use, with a cache row per --parallel slot."""
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        os.environ["TORCHCHAT_COMPILE_CACHE"] = tmp.name
        s = self.serve("--checkpoint-path", ckpt, "--max-seq-length", "64", "--compile", "auto")
        self.assertEqual(s[0].engine.n_slots, 4)
        self.assertIn("compiled", s[0].config.info)
        self.assertEqual(len(list(Path(tmp.name).glob("*.pt2"))), 1)
        return s


if __name__ == "__main__":
    unittest.main()
