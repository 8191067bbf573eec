"""End to end on the built-in model: `torchchat server` started as a user
starts it (so it compiles the batched model on first use), asked by the
openai client, streamed and not."""

import json
import os
import socket
import subprocess
import time
import unittest
import urllib.request
import zipfile
from pathlib import Path

import openai
import pydantic

RUNFILES = Path(os.environ.get("TEST_SRCDIR", "."), "_main")
TORCHCHAT = RUNFILES / "cli" / "torchchat"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BuiltinServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        port = free_port()
        cls.cache = Path(os.environ.get("TEST_TMPDIR", "/tmp"), "compiled")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TORCHCHAT_COMPILE_CACHE=str(cls.cache))
        cls.proc = subprocess.Popen(
            # 8-bit activations (the default, llama.cpp's) make this 135M
            # model answer "L'Étoile, la ..." to the capital of France, as
            # llama.cpp does; at 16 bits it says Paris.
            [str(TORCHCHAT), "server", "--port", str(port), "--parallel", "2", "--quiet"]
            + ["--decode-x", "int16"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        cls.url = f"http://127.0.0.1:{port}"
        # The first start compiles (under a minute on 2 cores).
        deadline = time.monotonic() + 900
        while True:
            try:
                with urllib.request.urlopen(cls.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if cls.proc.poll() is not None or time.monotonic() > deadline:
                cls.proc.kill()
                raise RuntimeError(f"server did not start: {cls.proc.stderr.read().decode()}")
            time.sleep(0.5)
        cls.client = openai.OpenAI(base_url=cls.url + "/v1", api_key="unused")
        cls.model = cls.client.models.list().data[0].id
        with urllib.request.urlopen(cls.url + "/health", timeout=5) as r:
            cls.health = json.load(r)

    def test_serves_the_compiled_batched_model(self):
        self.assertEqual(self.health["slots"], 2)
        (package,) = self.cache.glob("*.pt2")
        with zipfile.ZipFile(package) as z:
            (name,) = [n for n in z.namelist() if n.endswith("wrapper_metadata.json")]
            self.assertEqual(json.loads(z.read(name))["slots"], "2")

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=60)

    def test_the_capital_of_france(self):
        r = self.client.chat.completions.create(
            model=self.model, messages=QUESTION, temperature=0, max_tokens=40
        )
        self.assertIn("Paris", r.choices[0].message.content)
        self.assertGreater(r.usage.completion_tokens, 0)

    def test_streamed(self):
        chunks = self.client.chat.completions.create(
            model=self.model, messages=QUESTION, temperature=0, max_tokens=40, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertIn("Paris", text)

    def test_structured_output(self):
        # openai's parse(): the pydantic model as a strict JSON Schema, the
        # answer parsed back into it.
        ask = [{"role": "user", "content": "The capital of France, as JSON: its name and country."}]
        r = self.client.chat.completions.parse(
            model=self.model, messages=ask, temperature=0, max_tokens=80, response_format=City
        )
        city = r.choices[0].message.parsed
        self.assertIsInstance(city, City)
        # SmolLM2-135M's answer; the form is the grammar's, the words its own.
        self.assertEqual((city.name.lower(), city.country.lower()), ("paris", "france"))


if __name__ == "__main__":
    unittest.main()
