"""The openai client against a running server on the tiny random model."""

import json
import math
import os
import tempfile
import unittest
import urllib.request

os.environ["HF_HUB_OFFLINE"] = "1"

import openai

from server.harness import Running, TinyServerCase, engine_for
from testing import tiny_model
from testing.cli_harness import run

PROMPT = "The quick brown fox"
QUESTION = "Hello, my name is"


def generate(ckpt, *flags):
    """What `torchchat generate --compile none` prints: the eager forward the
    server batches (generate's compiled default rounds differently)."""
    rc, out, err = run(
        ["generate", "--checkpoint-path", ckpt, "--quiet", "--compile", "none", *flags]
    )
    assert rc == 0, err
    return out


class ApiTest(TinyServerCase):
    FLAGS = ["--parallel", "4", "--max-new-tokens", "16"]

    def chat(self, **kw):
        kw.setdefault("messages", [{"role": "user", "content": QUESTION}])
        return self.client.chat.completions.create(model=self.model, **kw)

    def complete(self, **kw):
        kw.setdefault("prompt", PROMPT)
        return self.client.completions.create(model=self.model, **kw)

    def test_greedy_completion_is_what_generate_prints(self):
        r = self.complete(max_tokens=20, temperature=0)
        want = generate(
            self.ckpt, "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "20"
        )
        self.assertEqual(PROMPT + r.choices[0].text + "\n", want)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 20)
        self.assertEqual(r.object, "text_completion")

    def test_greedy_chat_is_what_generate_chat_template_prints(self):
        r = self.chat(max_tokens=20, temperature=0)
        want = generate(
            self.ckpt,
            "--chat-template",
            "--prompt",
            QUESTION,
            "--temperature",
            "0",
            "--max-new-tokens",
            "20",
        )
        self.assertEqual(r.choices[0].message.content + "\n", want)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.system_fingerprint.startswith("fp_"))
        self.assertGreater(r.created, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_stream_equals_non_stream_with_usage(self):
        whole = self.chat(max_tokens=12, temperature=0)
        chunks = list(
            self.chat(
                max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices][-1], "length")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))
        plain = list(self.chat(max_tokens=12, temperature=0, stream=True))
        self.assertTrue(all(c.usage is None and c.choices for c in plain))

        whole = self.complete(max_tokens=12, temperature=0)
        chunks = list(
            self.complete(
                max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
            )
        )
        self.assertEqual(
            "".join(c.choices[0].text for c in chunks if c.choices), whole.choices[0].text
        )
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)

    def test_seed_reproduces_and_n_gives_seeded_choices(self):
        kw = dict(max_tokens=16, temperature=1.2, top_p=1.0)
        a = self.chat(seed=11, **kw).choices[0].message.content
        self.assertEqual(self.chat(seed=11, **kw).choices[0].message.content, a)
        others = {self.chat(seed=s, **kw).choices[0].message.content for s in (12, 13, 14)}
        self.assertNotEqual(others, {a})
        r = self.chat(seed=11, n=3, **kw)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        # Choice k of a seeded request is the seed+k request.
        self.assertEqual(r.choices[0].message.content, a)
        self.assertEqual(
            r.choices[2].message.content, self.chat(seed=13, **kw).choices[0].message.content
        )
        self.assertEqual(
            r.usage.completion_tokens,
            sum(self.chat(seed=s, **kw).usage.completion_tokens for s in (11, 12, 13)),
        )
        streamed = ["", "", ""]
        for c in self.chat(seed=11, n=3, stream=True, **kw):
            for ch in c.choices:
                streamed[ch.index] += ch.delta.content or ""
        self.assertEqual(streamed, [c.message.content for c in r.choices])

    def test_completions_take_prompt_lists_and_token_ids(self):
        r = self.complete(prompt=[PROMPT, "Pack my box"], max_tokens=5, temperature=0, n=2)
        self.assertEqual(len(r.choices), 4)
        self.assertEqual(r.choices[0].text, r.choices[1].text)  # greedy, same prompt
        alone = self.complete(prompt="Pack my box", max_tokens=5, temperature=0).choices[0].text
        self.assertEqual(r.choices[2].text, alone)
        ids = self.server.engine.tokenizer.encode("Pack my box", bos=False)
        self.assertEqual(
            self.complete(prompt=ids, max_tokens=5, temperature=0).choices[0].text, alone
        )
        echo = self.complete(prompt="Pack my box", max_tokens=5, temperature=0, echo=True)
        self.assertEqual(echo.choices[0].text, "Pack my box" + alone)

    def test_stop_strings_cut_across_tokens(self):
        full = self.complete(max_tokens=24, temperature=0).choices[0].text
        ids = self.server.engine.tokenizer.encode(full, bos=False)
        # A stop that starts inside one token and ends in a later one.
        tok = self.server.engine.tokenizer
        start = len(tok.decode(ids[:5])) - 1
        stop = full[start : start + 4]
        self.assertGreater(len(stop), 1)
        r = self.complete(max_tokens=24, temperature=0, stop=[stop, "never-there"])
        cut = full[: full.index(stop)]
        self.assertEqual(r.choices[0].text, cut)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        chunks = list(self.complete(max_tokens=24, temperature=0, stop=stop, stream=True))
        self.assertEqual("".join(c.choices[0].text for c in chunks), cut)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")

    def test_logprobs(self):
        r = self.chat(max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertEqual(len(t.top_logprobs), 3)
            lps = [x.logprob for x in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            self.assertAlmostEqual(t.logprob, lps[0], places=5)  # greedy picks the top one
            self.assertLessEqual(sum(math.exp(x) for x in lps), 1.0 + 1e-5)
        self.assertIsNone(self.chat(max_tokens=2).choices[0].logprobs)
        c = self.complete(max_tokens=6, temperature=0, logprobs=2)
        lp = c.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 6)
        self.assertEqual("".join(lp.tokens), c.choices[0].text)
        self.assertEqual(lp.text_offset[0], 0)
        self.assertTrue(all(len(d) <= 2 for d in lp.top_logprobs))

    def test_penalties_apply_to_generated_tokens(self):
        def tokens(**kw):
            r = self.complete(max_tokens=24, temperature=0, logprobs=0, **kw)
            return r.choices[0].logprobs.tokens

        plain = tokens()
        # The random model rarely repeats itself; a negative penalty makes
        # every generated token more likely again, so greedy starts looping.
        looped = tokens(frequency_penalty=-2.0, presence_penalty=-2.0)
        self.assertEqual(looped[0], plain[0])  # nothing generated yet at the first pick
        self.assertLess(len(set(looped)), len(set(plain)))

    def test_forced_tool_calls_parse_even_from_a_random_model(self):
        weather = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 10}},
                    "required": ["city"],
                },
            },
        }
        other = {"type": "function", "function": {"name": "noop"}}
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            r = self.chat(tools=[other, weather], tool_choice=choice, max_tokens=120, temperature=0)
            c = r.choices[0]
            self.assertEqual(c.finish_reason, "tool_calls", c)
            (call,) = c.message.tool_calls
            if choice != "required":
                self.assertEqual(call.function.name, "get_weather")
            if call.function.name == "get_weather":
                self.assertLessEqual(len(json.loads(call.function.arguments)["city"]), 10)
            streamed = list(
                self.chat(
                    tools=[other, weather],
                    tool_choice=choice,
                    max_tokens=120,
                    temperature=0,
                    stream=True,
                )
            )
            calls = [t for ch in streamed for t in (ch.choices[0].delta.tool_calls or [])]
            self.assertEqual(
                [(t.function.name, t.function.arguments) for t in calls],
                [(call.function.name, call.function.arguments)],
            )
            self.assertEqual(streamed[-1].choices[0].finish_reason, "tool_calls")

    def test_ignore_eos_generates_max_tokens(self):
        kw = dict(max_tokens=48, temperature=2.0, seed=3, n=4)
        plain = self.complete(**kw)
        self.assertIn("stop", [c.finish_reason for c in plain.choices])  # else vacuous
        r = self.complete(**kw, extra_body={"ignore_eos": True})
        self.assertEqual([c.finish_reason for c in r.choices], ["length"] * 4)
        self.assertEqual(r.usage.completion_tokens, 48 * 4)

    def test_models_and_health(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], [self.model])
        self.assertEqual(self.client.models.retrieve(self.model).id, self.model)
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("no-such-model")
        with urllib.request.urlopen(self.server.url + "/health") as r:
            self.assertEqual(r.status, 200)


class ApiKeyTest(unittest.TestCase):
    def test_bearer_key_is_required_on_v1(self):
        with tempfile.TemporaryDirectory() as d:
            ckpt = str(tiny_model.write_checkpoint(os.path.join(d, "tiny")))
            engine, config = engine_for(["--checkpoint-path", ckpt, "--api-key", "s3cret"])
            server = Running(engine, config)
            try:
                bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
                with self.assertRaises(openai.AuthenticationError) as e:
                    bad.models.list()
                self.assertEqual(e.exception.status_code, 401)
                self.assertEqual(e.exception.code, "invalid_api_key")
                good = openai.OpenAI(base_url=server.base_url, api_key="s3cret", max_retries=0)
                self.assertEqual(len(good.models.list().data), 1)
                with urllib.request.urlopen(server.url + "/health") as r:
                    self.assertEqual(r.status, 200)  # health checks need no key
            finally:
                server.close()


if __name__ == "__main__":
    unittest.main()
