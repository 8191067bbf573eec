"""The HTTP API as one ASGI app: each endpoint family's router (one module
each), OpenAI's error objects for every failure, the API key, and the
body-size limit around it all."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from server import chat, common, completions, health, models, page
from server.common import Config, Served
from server.engine import Engine

__all__ = ["Config", "create_app"]  # Config is common's; main and the tests import it here


def create_app(engine: Engine, config: Config) -> ASGIApp:
    """The API as an ASGI app (FastAPI inside the body-size limit)."""
    page.files()  # a missing page fails at start, not at the first visit
    app = FastAPI(title="torchchat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = Served(engine, config, engine.tokenizer.template())
    common.install_error_handlers(app)
    app.middleware("http")(common.require_key)
    for family in (page, health, models, chat, completions):
        app.include_router(family.router)
    return common.BodyLimit(app, config.max_body_bytes)
