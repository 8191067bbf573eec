"""The HTTP API as one ASGI app: each endpoint family's router (one module
each), OpenAI's error objects for every failure, the API key, and the
body-size limit around it all."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from server import (
    chat,
    common,
    completions,
    embeddings,
    health,
    metrics,
    models,
    page,
    props,
    tokens,
)
from server.common import Config, Served
from server.engine import Engine

__all__ = ["Config", "create_app"]  # Config is common's; the tests import it from here


def create_app(engine: Engine, config: Config) -> ASGIApp:
    """The API as an ASGI app (FastAPI inside the body-size limit)."""
    page.files()  # a missing page fails at start, not at the first visit
    app = FastAPI(title="torchchat", docs_url=None, redoc_url=None, openapi_url=None)
    template = engine.tokenizer.template()
    app.state.served = Served(engine, config, template, metrics.Metrics(engine))
    common.install_error_handlers(app)
    app.middleware("http")(common.require_key)
    for family in (page, health, models, chat, completions, embeddings, tokens, props, metrics):
        app.include_router(family.router)
    return common.BodyLimit(app, config.max_body_bytes)
