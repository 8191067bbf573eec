"""POST /v1/embeddings on a tiny random transformers Llama: the pooled, unit
vectors match transformers' last hidden states within 1e-4, through the
openai client (base64) and plain JSON (float), beside a running generation;
bad input is a 400 with one line."""

import base64
import http.client
import json
import os
import shutil
import tempfile
import threading
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import openai
import torch

from server.engine import serial_engine
from server.harness import Running, engine_for
from testing import tiny_model
from testing.tiny_archs import VOCAB, hf_model

TOL = 1e-4


def call(server, body):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/embeddings", body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, json.loads(r.read())
    conn.close()
    return out


def reference(ref, ids, how):
    """transformers' last hidden states, pooled and scaled to unit length."""
    with torch.inference_mode():
        h = ref.model(torch.tensor([ids])).last_hidden_state[0].double()
    v = {"mean": h.mean(0), "last": h[-1], "cls": h[0]}[how]
    return (v / v.norm()).numpy()


class EmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = os.path.join(cls.tmp.name, "hf")
        cls.ref = hf_model("llama")
        cls.ref.save_pretrained(d)
        tiny_model.write_tokenizer(Path(d))
        # Chunks of 8 tokens: the longer inputs run in several steps.
        engine, config = engine_for(
            ["--checkpoint-path", d, "--parallel", "2", "--quiet", "--prefill-chunk", "8"]
        )
        cls.server = Running(engine, config)
        cls.model = config.model_id
        cls.client = openai.OpenAI(base_url=cls.server.base_url, api_key="unused")
        g = torch.Generator().manual_seed(3)
        cls.inputs = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (1, 7, 30, 90)]

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.tmp.cleanup()

    def embed(self, inputs, **kw):
        status, body = call(self.server, {"model": self.model, "input": inputs, **kw})
        self.assertEqual(status, 200, body)
        return body

    def test_matches_transformers(self):
        for how in ("mean", "last", "cls"):
            with self.subTest(how):
                self.server.config.pooling = how
                try:
                    body = self.embed(self.inputs)
                finally:
                    self.server.config.pooling = "mean"
                self.assertEqual([d["index"] for d in body["data"]], [0, 1, 2, 3])
                for d, ids in zip(body["data"], self.inputs):
                    got = np.array(d["embedding"])
                    self.assertEqual(got.shape, (64,))
                    err = np.abs(got - reference(self.ref, ids, how)).max()
                    self.assertLess(err, TOL, (how, len(ids)))
                n = sum(len(x) for x in self.inputs)
                self.assertEqual(body["usage"], {"prompt_tokens": n, "total_tokens": n})
                self.assertEqual(body["object"], "list")
                self.assertEqual(body["model"], self.model)

    def test_openai_client_base64_and_text(self):
        # The client asks for base64 and decodes it itself.
        r = self.client.embeddings.create(model=self.model, input=self.inputs[2])
        want = reference(self.ref, self.inputs[2], "mean")
        self.assertLess(np.abs(np.array(r.data[0].embedding) - want).max(), TOL)
        self.assertEqual(r.usage.prompt_tokens, len(self.inputs[2]))
        raw = self.embed(self.inputs[1], encoding_format="base64")["data"][0]["embedding"]
        floats = self.embed(self.inputs[1])["data"][0]["embedding"]
        self.assertEqual(np.frombuffer(base64.b64decode(raw), "<f4").tolist(), floats)
        # Text is encoded as a completions prompt is (bos where the model adds it).
        tok = self.server.engine.tokenizer
        text = "The quick brown fox jumps over the lazy dog."
        ids = tok.encode(text, bos=tok.add_bos)
        r = self.client.embeddings.create(model=self.model, input=[text, "Hello"])
        self.assertEqual(len(r.data), 2)
        self.assertLess(
            np.abs(np.array(r.data[0].embedding) - reference(self.ref, ids, "mean")).max(), TOL
        )

    def test_beside_a_generation(self):
        """Batched with a running stream: each gets what it gets alone."""
        prompt = {"model": self.model, "prompt": self.inputs[2], "max_tokens": 40}
        prompt.update(temperature=0, extra_body={"ignore_eos": True})
        alone = self.client.completions.create(**prompt).choices[0].text
        got = {}

        def generate():
            got["text"] = self.client.completions.create(**prompt).choices[0].text

        t = threading.Thread(target=generate)
        t.start()
        bodies = [self.embed(self.inputs) for _ in range(3)]
        t.join()
        self.assertEqual(got["text"], alone)
        for body in bodies:
            for d, ids in zip(body["data"], self.inputs):
                err = np.abs(np.array(d["embedding"]) - reference(self.ref, ids, "mean")).max()
                self.assertLess(err, TOL)

    def test_bad_input(self):
        seq = self.server.config.max_seq_length
        cases = {
            "empty string": ({"input": ""}, "input", None),
            "empty list": ({"input": []}, "input", None),
            "empty token list": ({"input": [[]]}, "input[0]", None),
            "one of two empty": ({"input": ["Hello", ""]}, "input[1]", None),
            "too long": ({"input": [5] * (seq + 1)}, "input", "context_length_exceeded"),
            "a number": ({"input": 5}, "input", None),
            "floats": ({"input": [1.5, 2.0]}, "input", None),
            "nested strings": ({"input": [["a"]]}, "input", None),
            "null": ({"input": None}, "input", None),
            "missing": ({}, "input", None),
            "id out of range": ({"input": [1, VOCAB + 5]}, "input", None),
            "format": ({"input": "Hi", "encoding_format": "hex"}, "encoding_format", None),
            "dimensions": ({"input": "Hi", "dimensions": 8}, "dimensions", "unsupported_parameter"),
        }
        for name, (fields, param, code) in cases.items():
            with self.subTest(name):
                status, body = call(self.server, {"model": self.model, **fields})
                self.assertEqual(status, 400, body)
                err = body["error"]
                self.assertEqual(set(err), {"message", "type", "param", "code"})
                self.assertTrue(err["param"] and err["param"].startswith(param), err)
                self.assertEqual(err["code"], code, err)
                self.assertNotIn("\n", err["message"])
        status, body = call(self.server, b"{not json")
        self.assertEqual(status, 400, body)
        status, body = call(self.server, {"model": "other", "input": "Hi"})
        self.assertEqual((status, body["error"]["code"]), (404, "model_not_found"))
        # The server still serves.
        self.embed("Hello")

    def test_pooling_from_the_checkpoint(self):
        import gguf

        from server.embeddings import model_pooling

        tmp = Path(self.tmp.name)
        path = tmp / "last.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_uint32("llama.pooling_type", 3)  # llama.cpp's LLAMA_POOLING_TYPE_LAST
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        self.assertEqual(model_pooling(str(path)), "last")
        self.assertIsNone(model_pooling(str(tmp / "hf")))
        # sentence-transformers' pooling config beside an HF checkpoint.
        st = tmp / "st"
        shutil.copytree(tmp / "hf", st)
        (st / "1_Pooling").mkdir()
        (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
        self.assertEqual(engine_for(["--checkpoint-path", str(st), "--quiet"])[1].pooling, "cls")
        flag = ["--checkpoint-path", str(st), "--quiet", "--pooling", "mean"]
        self.assertEqual(engine_for(flag)[1].pooling, "mean")
        self.assertEqual(self.server.config.pooling, "mean")  # a decoder LLM's default

    def test_compiled_package_refuses(self):
        class Package:  # a batch-1 artifact: logits only
            max_seq_length = 64

        engine = serial_engine(Package(), self.server.engine.tokenizer, 4)
        server = Running(engine, self.server.config)
        try:
            status, body = call(server, {"model": self.model, "input": "Hi"})
        finally:
            server.close()
        self.assertEqual(status, 501, body)
        self.assertIn("--slots", body["error"]["message"])

    def test_package_with_slots(self):
        """A .pt2 exported with --slots returns hidden states beside its
        logits: the same vectors as the eager model's (the compiled default
        server serves such a package)."""
        pt2 = os.path.abspath(os.environ["TINY_SLOTS"])
        ckpt = os.path.join(os.path.dirname(pt2), "ckpt")
        texts = ["the quick brown fox", "jumps over the lazy dog " * 2, "a"]
        got = []
        for argv in (
            ["--checkpoint-path", ckpt, "--max-seq-length", "64"],
            ["--aoti-package-path", pt2],
        ):
            engine, config = engine_for(
                [*argv, "--quiet", "--parallel", "2", "--prefill-chunk", "8"]
            )
            server = Running(engine, config)
            try:
                status, body = call(server, {"model": config.model_id, "input": texts})
            finally:
                server.close()
            self.assertEqual(status, 200, body)
            got.append(np.array([d["embedding"] for d in body["data"]]))
        self.assertEqual(got[1].shape, got[0].shape)
        np.testing.assert_allclose(got[1], got[0], atol=TOL)


if __name__ == "__main__":
    unittest.main()
