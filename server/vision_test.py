"""Image parts in /v1/chat/completions on a tiny Gemma 3 with a vision
tower: the openai client's content parts give what `chat --image` gives,
batched beside text-only requests; every bad part is a 400 naming it. The
same on a tiny SmolVLM (its images split into tiles)."""

import base64
import concurrent.futures
import functools
import http.server
import importlib.util
import io
import os
import tempfile
import threading
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import openai

from server.harness import Running, engine_for
from testing import tiny_model, tiny_smolvlm, tiny_vision
from torchchat import loading
from torchchat.generate import ChatSession, argmax
from torchchat.vision import open_image, read_image

# Real photos from a PyPI package in the lock (scikit-learn).
IMAGES = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets/images"
CHINA = IMAGES / "china.jpg"
TOKENS = 12


def data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def ask(url: str, text: str = "Hello") -> list:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        }
    ]


class VisionServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = Path(cls.tmp.name)
        cls.ckpt = str(tiny_vision.write_gemma3_vision(d / "g3v"))
        engine, config = engine_for(
            ["--checkpoint-path", cls.ckpt, "--parallel", "2", "--quiet"]
            + ["--max-body-bytes", str(4 << 20), "--prefill-chunk", "8"]
        )
        cls.config = config
        cls.server = Running(engine, config)
        cls.client = openai.OpenAI(base_url=cls.server.base_url, api_key="x")
        # What chat --image answers, from the library.
        loaded = loading.load(loading.LoadOptions(checkpoint=Path(cls.ckpt), compile="none"))
        tok = loaded.tokenizer
        session = ChatSession(loaded.slot(), tok, tok.template(), None, loaded.vision)
        cls.want = session.turn("Hello", argmax, TOKENS, images=[read_image(CHINA)]).text
        session.reset()
        cls.want_text = session.turn("Hello", argmax, TOKENS).text
        # A local web server for --allow-image-urls.
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IMAGES))
        handler.log_message = lambda *a: None
        cls.web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=cls.web.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.web.shutdown()
        cls.server.close()
        cls.tmp.cleanup()

    def complete(self, messages) -> str:
        r = self.client.chat.completions.create(
            model=self.config.model_id, messages=messages, temperature=0, max_tokens=TOKENS
        )
        return r.choices[0].message.content

    def error(self, messages) -> openai.BadRequestError:
        with self.assertRaises(openai.BadRequestError) as cm:
            self.complete(messages)
        return cm.exception

    def test_image_part_answers_as_chat_does(self):
        self.assertNotEqual(self.want, self.want_text)
        self.assertEqual(self.complete(ask(data_url(CHINA.read_bytes()))), self.want)
        # Again: the cached prefix (image included) is reused.
        self.assertEqual(self.complete(ask(data_url(CHINA.read_bytes()))), self.want)

    def test_batched_with_text_requests(self):
        msgs = [ask(data_url(CHINA.read_bytes())), [{"role": "user", "content": "Hello"}]] * 3
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(self.complete, msgs))
        self.assertEqual(got, [self.want, self.want_text] * 3)

    def test_urls(self):
        url = f"http://127.0.0.1:{self.web.server_port}/china.jpg"
        e = self.error(ask(url))
        self.assertEqual(e.body["code"], "image_url_refused")
        self.config.allow_image_urls = True
        try:
            self.assertEqual(self.complete(ask(url)), self.want)
            e = self.error(ask(url.replace("china", "missing")))
            self.assertIn("HTTP 404", e.body["message"])
            self.config.max_image_bytes = 1000
            e = self.error(ask(url))
            self.assertEqual(e.body["code"], "image_too_large")
        finally:
            self.config.allow_image_urls = False
            self.config.max_image_bytes = 20 << 20

    def test_bad_images_name_the_part(self):
        data = CHINA.read_bytes()
        cases = [
            (ask(data_url(b"hello")), "messages[0].content[0]", "not an image"),
            (ask(data_url(data[: len(data) // 2])), "messages[0].content[0]", "cannot be decoded"),
            (ask("data:image/png,abc"), "messages[0].content[0]", "must be base64"),
            (ask("ftp://x/y.png"), "messages[0].content[0]", "data: or http"),
        ]
        five = [{"type": "image_url", "image_url": {"url": data_url(data)}}] * 5
        cases.append(
            ([{"role": "user", "content": five}], "messages[0].content[4]", "at most 4 images")
        )
        for messages, where, text in cases:
            with self.subTest(text):
                e = self.error(messages)
                self.assertEqual(e.body["param"], where)
                self.assertIn(where, e.body["message"])
                self.assertIn(text, e.body["message"])
        # Still serving.
        self.assertEqual(self.complete(ask(data_url(data))), self.want)

    def test_text_model_refuses_images(self):
        ckpt = str(tiny_model.write_checkpoint(Path(self.tmp.name) / "tiny"))
        engine, config = engine_for(["--checkpoint-path", ckpt, "--quiet"])
        server = Running(engine, config)
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key="x")
            with self.assertRaises(openai.BadRequestError) as cm:
                client.chat.completions.create(model=config.model_id, messages=ask(data_url(b"x")))
            self.assertEqual(cm.exception.body["code"], "images_unsupported")
        finally:
            server.close()


class SmolVLMServerTest(unittest.TestCase):
    """The second family: two images (2 x 2 tiles and 1 x 2) in one
    message answer as the chat session does, beside a text request."""

    def test_image_parts_answer_as_chat_does(self):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = tiny_smolvlm.write_smolvlm(Path(tmp) / "smolvlm")
            loaded = loading.load(loading.LoadOptions(checkpoint=ckpt, compile="none"))
            tok = loaded.tokenizer
            session = ChatSession(loaded.slot(), tok, tok.template(), None, loaded.vision)
            photo = read_image(CHINA)
            buf = io.BytesIO()
            photo.resize((200, 40)).save(buf, "PNG")
            small = buf.getvalue()
            want = session.turn("Hello", argmax, TOKENS, images=[photo, open_image(small)]).text
            session.reset()
            want_text = session.turn("Hello", argmax, TOKENS).text
            engine, config = engine_for(
                ["--checkpoint-path", str(ckpt), "--parallel", "2", "--quiet"]
                + ["--max-body-bytes", str(4 << 20)]
            )
            server = Running(engine, config)
            try:
                client = openai.OpenAI(base_url=server.base_url, api_key="x")

                def complete(messages: list) -> str | None:
                    r = client.chat.completions.create(
                        model=config.model_id, messages=messages, temperature=0, max_tokens=TOKENS
                    )
                    return r.choices[0].message.content

                two = ask(data_url(CHINA.read_bytes()))
                two[0]["content"].insert(
                    1, {"type": "image_url", "image_url": {"url": data_url(small)}}
                )
                msgs = [two, [{"role": "user", "content": "Hello"}]] * 2
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    got = list(pool.map(complete, msgs))
                self.assertNotEqual(want, want_text)
                self.assertEqual(got, [want, want_text] * 2)
            finally:
                server.close()


if __name__ == "__main__":
    unittest.main()
