"""Speculative decoding in the server, per slot beside continuous batching:
clients at once get, greedy, exactly what a plain server gives each alone
(prompt lookup and a draft model, fixed and adaptive k, eager and the tiny
compiled package with slots); usage.speculative and /metrics count the
drafts; /props shows the settings; bad flags are one line."""

import json
import os
import tempfile
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor

os.environ["HF_HUB_OFFLINE"] = "1"

import openai
from prometheus_client.parser import text_string_to_metric_families

from server.harness import Running, engine_for
from testing import tiny_model
from torchchat.errors import UserError

WORDS = "the quick brown fox jumps over the lazy dog while the cat sleeps".split()
# Text that repeats itself, as an edit or a summary of it does, and some
# that does not: guesses are kept and rolled back.
PROMPTS = [" ".join(WORDS[i % 5 :] * (1 + i % 3)) for i in range(6)] + ["fox", "lazy cat"]
TOKENS = 40


def props(s) -> tuple[dict | None, dict]:
    """/props' speculative settings and default params."""
    with urllib.request.urlopen(s[0].url + "/props") as r:
        body = json.loads(r.read())
    return body["speculative"], body["default_generation_settings"]["params"]


class SpeculateServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.ckpt = str(tiny_model.write_checkpoint(os.path.join(cls.tmp.name, "tiny")))
        cls.plain = cls.serve("--checkpoint-path", cls.ckpt)
        cls.alone = [cls.complete(cls.plain, p)[0] for p in PROMPTS]

    @classmethod
    def tearDownClass(cls):
        cls.plain[0].close()
        cls.tmp.cleanup()

    @classmethod
    def serve(cls, *argv):
        engine, config = engine_for([*argv, "--quiet", "--parallel", "4", "--prefill-chunk", "8"])
        server = Running(engine, config)
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
        return server, client, config.model_id

    @staticmethod
    def complete(s, prompt, **kw):
        _, client, model = s
        r = client.completions.create(
            model=model, prompt=prompt, max_tokens=TOKENS, temperature=0, **kw
        )
        return r.choices[0].text, r.usage

    def together(self, s):
        """Every prompt at once (more than the slots): each text must be what
        the plain server gave it alone. The summed usage.speculative."""
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda p: self.complete(s, p), PROMPTS))
        self.assertEqual([t for t, _ in got], self.alone)
        drafted = sum(u.speculative["draft_tokens"] for _, u in got)
        accepted = sum(u.speculative["accepted_tokens"] for _, u in got)
        return drafted, accepted

    def check(self, *flags):
        s = self.serve("--checkpoint-path", self.ckpt, *flags)
        self.addCleanup(s[0].close)
        steps = s[0].engine.steps
        drafted, accepted = self.together(s)
        # Guesses were kept and rolled back, in steps that batched slots.
        self.assertGreater(accepted, 0)
        self.assertGreater(drafted, accepted)
        sizes = list(s[0].engine.batcher.step_sizes)[-(s[0].engine.steps - steps) :]
        self.assertGreater(max(sizes), 1)
        return s, drafted, accepted

    def test_prompt_lookup(self):
        s, drafted, accepted = self.check("--speculate", "prompt-lookup", "--draft-k", "4")
        # Fewer batched steps than tokens: kept guesses skipped forwards.
        self.assertLess(accepted, len(PROMPTS) * TOKENS)
        # /metrics counts exactly what usage reported.
        with urllib.request.urlopen(s[0].url + "/metrics") as r:
            text = r.read().decode()
        samples = {x.name: x.value for f in text_string_to_metric_families(text) for x in f.samples}
        self.assertEqual(samples["torchchat:draft_tokens_total"], drafted)
        self.assertEqual(samples["torchchat:draft_accepted_tokens_total"], accepted)

    def test_adaptive_k(self):
        s, _, _ = self.check("--speculate", "prompt-lookup", "--draft-k", "auto")
        spec, params = props(s)
        self.assertEqual(
            spec, {"mode": "prompt-lookup", "draft_model": None, "draft_k": "auto", "ngram_max": 3}
        )
        self.assertEqual((params["speculative.n_min"], params["speculative.n_max"]), (1, 15))

    def test_draft_model(self):
        # The model drafting for itself: its guesses are its own picks.
        s, drafted, accepted = self.check("--draft", self.ckpt, "--draft-k", "3")
        self.assertGreater(accepted, drafted // 2)
        spec, params = props(s)
        self.assertEqual(
            spec, {"mode": "draft", "draft_model": self.ckpt, "draft_k": 3, "ngram_max": None}
        )
        self.assertEqual((params["speculative.n_min"], params["speculative.n_max"]), (3, 3))
        # A plain server: no speculative settings, llama-server's bounds 0.
        spec, params = props(self.plain)
        self.assertIsNone(spec)
        self.assertEqual((params["speculative.n_min"], params["speculative.n_max"]), (0, 0))

    def test_streamed_chat_usage(self):
        s = self.serve("--checkpoint-path", self.ckpt, "--speculate", "prompt-lookup")
        self.addCleanup(s[0].close)
        _, client, model = s
        msgs = [{"role": "user", "content": PROMPTS[1]}]
        whole = client.chat.completions.create(
            model=model, messages=msgs, max_tokens=TOKENS, temperature=0
        )
        want = self.plain[1].chat.completions.create(
            model=model, messages=msgs, max_tokens=TOKENS, temperature=0
        )
        self.assertEqual(whole.choices[0].message.content, want.choices[0].message.content)
        self.assertIsNone(getattr(want.usage, "speculative", None))  # a plain server: none
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=msgs,
                max_tokens=TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(chunks[-1].usage.speculative, whole.usage.speculative)
        self.assertGreater(whole.usage.speculative["draft_tokens"], 0)

    def test_compiled_package_with_slots(self):
        pt2 = os.path.abspath(os.environ["TINY_SLOTS"])
        ckpt = os.path.join(os.path.dirname(pt2), "ckpt")
        argv = ["--max-seq-length", "64", "--parallel", "4"]
        eager = self.serve("--checkpoint-path", ckpt, *argv)
        self.addCleanup(eager[0].close)
        s = self.serve("--aoti-package-path", pt2, "--speculate", "prompt-lookup")
        self.addCleanup(s[0].close)

        def complete(server, p):
            _, client, model = server
            r = client.completions.create(model=model, prompt=p, max_tokens=20, temperature=0)
            return r.choices[0].text, r.usage

        prompts = [" ".join(WORDS[i : i + 3] * 2) for i in range(4)]
        alone = [complete(eager, p)[0] for p in prompts]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: complete(s, p), prompts))
        self.assertEqual([t for t, _ in got], alone)
        self.assertGreater(sum(u.speculative["accepted_tokens"] for _, u in got), 0)

    def test_bad_flags(self):
        base = ["--checkpoint-path", self.ckpt]
        for flags, msg in (
            (["--speculate", "prompt-lookup", "--draft-k", "0"], "at least 1"),
            (["--speculate", "prompt-lookup", "--draft-k", "many"], "a number or auto"),
            (["--speculate", "draft"], "needs --draft"),
        ):
            with self.subTest(flags=flags), self.assertRaises(UserError) as e:
                engine_for([*base, *flags])
            self.assertIn(msg, str(e.exception))
            self.assertNotIn("\n", str(e.exception))


if __name__ == "__main__":
    unittest.main()
