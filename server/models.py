"""GET /v1/models and /v1/models/{id}: the one model this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server import schema
from server.common import Config, Server, check_model

router = APIRouter()


def card(config: Config) -> schema.ModelCard:
    return schema.ModelCard(
        id=config.model_id, created=config.created, max_model_len=config.max_seq_length
    )


@router.get("/v1/models")
async def models(srv: Server) -> dict[str, Any]:
    return schema.ModelList(data=[card(srv.config)]).model_dump()


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, srv: Server) -> dict[str, Any]:
    check_model(srv.config, model_id)
    return card(srv.config).model_dump()
