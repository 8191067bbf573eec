"""GET /health: the server is up, and how busy; no API key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server import schema
from server.common import Server

router = APIRouter()


@router.get("/health")
async def health(srv: Server) -> dict[str, Any]:
    engine = srv.engine
    return schema.Health(
        model=srv.config.model_id,
        slots=engine.n_slots,
        slots_busy=engine.busy(),
        queued=engine.queued(),
    ).model_dump()
