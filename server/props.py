"""GET /props, as llama-server defines it: the defaults a request's fields
fall back to (speculative.n_max/n_min among them), the slots, the model's
path and chat template, the build; and torchchat's `speculative`: the
--speculate mode, --draft, --draft-k and prompt lookup's n-gram."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter

import llm_tokenizers
from server import schema
from server.common import Server

router = APIRouter()

# llama-server's seed when none is set: each request draws its own.
RANDOM_SEED = 0xFFFFFFFF


@router.get("/props")
async def props(srv: Server) -> dict[str, Any]:
    config, tok = srv.config, srv.engine.tokenizer
    spec = config.speculative
    n_min, n_max = (spec["n_min"], spec["n_max"]) if spec is not None else (0, 0)
    params = schema.GenerationParams(
        seed=RANDOM_SEED if config.seed is None else config.seed,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        min_p=config.min_p,
        repeat_last_n=llm_tokenizers.REPETITION_WINDOW,
        repeat_penalty=config.repetition_penalty,
        max_tokens=config.default_max_tokens,
        n_predict=config.default_max_tokens,
        speculative_n_min=n_min,
        speculative_n_max=n_max,
    )
    info = config.info
    return schema.Props(
        default_generation_settings=schema.GenerationSettings(
            n_ctx=config.max_seq_length, params=params
        ),
        total_slots=srv.engine.n_slots,
        model_alias=config.model_id,
        # What the model was loaded from: the checkpoint (even when it runs
        # compiled) or the exported artifact.
        model_path=str(info.get("checkpoint") or info.get("artifact") or ""),
        chat_template=tok.chat_template or "",
        bos_token=tok.token_text(tok.bos_id),
        eos_token=tok.token_text(tok.eos_ids[0] if tok.eos_ids else None),
        build_info=f"torchchat (torch {torch.__version__})",
        speculative=None
        if spec is None
        else schema.SpeculativeSettings(
            mode=spec["mode"],
            draft_model=spec["draft_model"],
            draft_k=spec["draft_k"],
            ngram_max=spec["ngram_max"],
        ),
    ).model_dump(by_alias=True)
