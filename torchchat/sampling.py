"""Next-token sampling through the tokenizers library's C++ sampler.

The same sampler and RNG stream serve the C++ runners, so one seed draws the
same tokens in Python, aoti_run and et_run. Its config check
(ValidateSamplerConfig) is the one place that validates sampling values.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

import llm_tokenizers
from torchchat.errors import UserError


class Sampler:
    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
    ):
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        # Raises llm_tokenizers.TokenizerError (a ValueError) naming the value.
        self._native = llm_tokenizers.Sampler(
            temperature, top_k, top_p, min_p, repetition_penalty, seed
        )

    def sample(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """The next id; the sampler penalizes the tail of `history` itself."""
        tail = list(history[-llm_tokenizers.REPETITION_WINDOW :])
        return int(self._native.sample(logits.reshape(-1).float().detach().cpu().numpy(), tail))

    __call__ = sample


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling and answer flags (generate, chat, and the server's defaults)."""
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--system-prompt", help="system message for the chat template")


def sampler_from_args(ns: argparse.Namespace) -> Sampler:
    """The Sampler add_sampling_args' flags describe; a bad value raises
    UserError naming it."""
    try:
        return Sampler(ns.temperature, ns.top_k, ns.top_p, ns.min_p, ns.repetition_penalty, ns.seed)
    except ValueError as e:
        raise UserError(str(e)) from e
