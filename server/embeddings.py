"""POST /v1/embeddings: OpenAI's shape, llama-server's pooling and norm.

Each input runs through the engine's own model (a slot, batched with the
running generations) and comes back as its last hidden state at every
token: the final norm's output, before the output layer. Those are pooled
to one vector (`--pooling`, else what the checkpoint names, else the mean
over the tokens; or the last token's, or the first's) and scaled to unit Euclidean length, as llama-server does with
its default `embd_normalize` of 2.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter

from server import jobs, schema
from server.common import APIError, Served, Server, check_model

router = APIRouter()

POOLINGS = ("mean", "last", "cls")
# llama.cpp's llama_pooling_type, as a GGUF's `<arch>.pooling_type` stores it.
_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}
# sentence-transformers' 1_Pooling/config.json switches.
_ST_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


def model_pooling(checkpoint: str | None) -> str | None:
    """The pooling a checkpoint names for its embeddings: a GGUF's
    `<arch>.pooling_type`, or sentence-transformers' `1_Pooling/config.json`
    beside an HF checkpoint. None where it names none (decoder LLMs)."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".gguf":
        from torchchat.checkpoint.gguf_file import GGUFFile

        fields = GGUFFile(path).fields
        kind = fields.get(f"{fields.get('general.architecture')}.pooling_type")
        return _GGUF_POOLING.get(int(kind)) if kind is not None else None
    config = path / "1_Pooling" / "config.json"
    if path.is_dir() and config.is_file():
        switches = json.loads(config.read_text())
        return next((how for key, how in _ST_POOLING.items() if switches.get(key)), None)
    return None


def pool(hidden: torch.Tensor, how: str) -> torch.Tensor:
    """One unit vector from [tokens, dim] hidden states."""
    if how == "mean":
        v = hidden.float().mean(0)
    elif how == "last":
        v = hidden[-1].float()
    elif how == "cls":
        v = hidden[0].float()
    else:
        raise ValueError(f"unknown pooling {how!r} ({', '.join(POOLINGS)})")
    # llama.cpp sums the squares in double, and leaves a zero vector zero.
    norm = float(torch.linalg.vector_norm(v.double()))
    return v / norm if norm > 0 else v


def encode(v: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        data = v.to(torch.float32).numpy().astype("<f4").tobytes()
        return base64.b64encode(data).decode("ascii")
    return v.tolist()


def inputs(srv: Served, req: schema.EmbeddingRequest) -> list[list[int]]:
    """Each input's ids, encoded as completions encodes a prompt."""
    tok, vocab, seq = srv.engine.tokenizer, srv.config.vocab_size, srv.config.max_seq_length
    out: list[list[int]] = []
    many = isinstance(req.input, list) and not isinstance(req.input[0], int)
    for k, x in enumerate(req.inputs()):
        param = f"input[{k}]" if many else "input"
        if isinstance(x, str):
            ids = tok.encode(x, bos=tok.add_bos) if x else []
        else:
            bad = [i for i in x if not 0 <= i < vocab]
            if bad:
                raise APIError(
                    400, f"token id {bad[0]} is out of range (vocab size {vocab})", param=param
                )
            ids = list(x)
        if not ids:
            raise APIError(400, "the input is empty", param=param)
        if len(ids) > seq:
            raise APIError(
                400,
                f"the input is {len(ids)} tokens, but this model's context holds {seq}",
                param=param,
                code="context_length_exceeded",
            )
        out.append(ids)
    return out


@router.post("/v1/embeddings")
async def embeddings(req: schema.EmbeddingRequest, srv: Server) -> dict[str, Any]:
    check_model(srv.config, req.model)
    if (req.model_extra or {}).get("dimensions") is not None:
        raise APIError(
            400,
            "dimensions is not supported (the vector has the model's width)",
            param="dimensions",
            code="unsupported_parameter",
        )
    engine = srv.engine
    if not engine.embeds:
        raise APIError(
            501,
            "this server's model is a batch-1 package (a .pte, a .pt2 exported without "
            "--slots, or the model compiled for --parallel 1), which returns logits only; "
            "serve a .pt2 exported with --slots, or start with --parallel 2 or more or "
            "--compile none, for embeddings",
            "not_supported_error",
            code="embeddings_not_supported",
        )
    ids = inputs(srv, req)
    jobs.admit(srv, min(len(ids), engine.n_slots))
    try:
        hidden = await engine.embed(ids)
    except Exception:
        why = engine.problem()
        if why:
            raise jobs.unavailable(why) from None
        raise
    data = [
        schema.Embedding(
            index=k, embedding=encode(pool(h, srv.config.pooling), req.encoding_format)
        )
        for k, h in enumerate(hidden)
    ]
    n = sum(len(x) for x in ids)
    return schema.EmbeddingList(
        data=data,
        model=srv.config.model_id,
        usage=schema.EmbeddingUsage(prompt_tokens=n, total_tokens=n),
    ).model_dump()
