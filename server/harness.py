"""A server on a free local port in a background thread, for tests."""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
import unittest
from typing import TYPE_CHECKING, ClassVar

import torch
import uvicorn

from server.app import Config, create_app
from server.engine import Engine, SlotsModel
from testing import tiny_model

if TYPE_CHECKING:
    import openai

    from torchchat.model import Images


def engine_for(argv: list[str]) -> tuple[Engine, Config]:
    """What `torchchat server ARGV` would serve; over the eager model unless
    ARGV gives --compile (most tests compare with `generate --compile none`,
    and a compile per test would cost half a minute)."""
    from server import main

    if "--compile" not in argv:
        argv = [*argv, "--compile", "none"]
    args: argparse.Namespace = main.build_parser().parse_args(argv)
    return main.build(args)


class Slowed:
    """A batched model with a fixed delay per step, so that a stream is still
    running when a test acts on it."""

    def __init__(self, model: SlotsModel, delay_s: float):
        self.model, self.delay_s = model, delay_s

    @property
    def max_seq_length(self) -> int:
        return self.model.max_seq_length

    def forward_slots(self, entries: list, images: Images = ()) -> torch.Tensor:
        time.sleep(self.delay_s)
        return (
            self.model.forward_slots(entries, images)
            if images
            else self.model.forward_slots(entries)
        )


class Running:
    def __init__(self, engine: Engine, config: Config):
        self.engine, self.config = engine, config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(engine, config), log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class TinyServerCase(unittest.TestCase):
    """Tests over one server of the tiny random model for the whole class:
    FLAGS are `torchchat server`'s beyond the checkpoint and --quiet.
    `prepare` may wrap the engine's model (Slowed) before serving starts."""

    FLAGS: ClassVar[list[str]] = []
    tmp: ClassVar[tempfile.TemporaryDirectory[str]]
    ckpt: ClassVar[str]
    engine: ClassVar[Engine]
    config: ClassVar[Config]
    server: ClassVar[Running]
    model: ClassVar[str]
    client: ClassVar[openai.OpenAI]

    @classmethod
    def prepare(cls, engine: Engine) -> None:
        pass

    @classmethod
    def setUpClass(cls) -> None:
        import openai

        cls.tmp = tempfile.TemporaryDirectory()
        cls.ckpt = str(tiny_model.write_checkpoint(os.path.join(cls.tmp.name, "tiny")))
        cls.engine, cls.config = engine_for(["--checkpoint-path", cls.ckpt, "--quiet", *cls.FLAGS])
        cls.prepare(cls.engine)
        cls.server = Running(cls.engine, cls.config)
        cls.model = cls.config.model_id
        cls.client = openai.OpenAI(base_url=cls.server.base_url, api_key="unused", max_retries=0)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()
        cls.tmp.cleanup()


def stream_error(case: unittest.TestCase, events: list[str]) -> dict[str, str]:
    """The OpenAI error object that ends a broken SSE stream: EVENTS are the
    stream's `data: ` lines; the last must be the error, not [DONE], with
    exactly OpenAI's four fields."""
    case.assertTrue(events, "the stream ended without an event")
    case.assertNotIn("[DONE]", events[-1])
    error = json.loads(events[-1][len("data: ") :])["error"]
    case.assertEqual(set(error), {"message", "type", "param", "code"})
    return error
