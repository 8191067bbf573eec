"""GET /health: the server is up, and how busy; no API key needed. A server
whose engine cannot serve answers 503 (and a Ray Serve replica fails its
health check, so Serve replaces it: server/replicas.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server import schema
from server.common import APIError, Server
from server.engine import Engine

router = APIRouter()


def problem(engine: Engine) -> str | None:
    """Why the engine cannot serve, or None."""
    return engine.problem()


@router.get("/health")
async def health(srv: Server) -> dict[str, Any]:
    engine = srv.engine
    why = problem(engine)
    if why:
        raise APIError(503, f"unhealthy: {why}", "server_error", code="unhealthy")
    return schema.Health(
        model=srv.config.model_id,
        slots=engine.n_slots,
        slots_busy=engine.busy(),
        queued=engine.queued(),
    ).model_dump()
