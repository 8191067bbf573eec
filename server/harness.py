"""A server on a free local port in a background thread, for tests."""

from __future__ import annotations

import argparse
import socket
import threading
import time

import uvicorn

from server.app import Config, create_app
from server.engine import Engine


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

    def __init__(self, model: object, delay_s: float):
        self.model, self.delay_s = model, delay_s

    def forward_slots(self, entries: list[tuple[int, list[int], int]]) -> object:
        time.sleep(self.delay_s)
        return self.model.forward_slots(entries)  # type: ignore[attr-defined]


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
