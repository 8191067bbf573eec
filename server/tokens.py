"""POST /tokenize and POST /detokenize, as llama-server defines them: the
model's tokenizer, without generating."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server import schema
from server.common import APIError, Server

router = APIRouter()


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@router.post("/tokenize")
async def tokenize(req: schema.TokenizeRequest, srv: Server) -> dict[str, Any]:
    tok = srv.engine.tokenizer
    # add_special adds what the model's plain prompts start with (its bos,
    # if it has that rule), as llama.cpp's add_special does.
    ids = tok.encode(req.content, bos=req.add_special and tok.add_bos, special=req.parse_special)
    tokens: list[int] | list[schema.TokenPiece] = ids
    if req.with_pieces:
        tokens = [schema.TokenPiece(id=i, piece=_piece(tok.decode_bytes([i]))) for i in ids]
    return schema.TokenizeResponse(tokens=tokens).model_dump()


@router.post("/detokenize")
async def detokenize(req: schema.DetokenizeRequest, srv: Server) -> dict[str, Any]:
    vocab = srv.config.vocab_size
    for k, i in enumerate(req.tokens):
        if not 0 <= i < vocab:
            raise APIError(
                400, f"token id {i} is out of range (vocab size {vocab})", param=f"tokens[{k}]"
            )
    try:
        content = srv.engine.tokenizer.decode(req.tokens)
    except ValueError as e:  # an id the model has but its tokenizer lacks
        raise APIError(400, str(e), param="tokens") from None
    return schema.DetokenizeResponse(content=content).model_dump()
