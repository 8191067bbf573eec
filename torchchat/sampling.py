"""Next-token sampling.

Uses `llm_tokenizers.Sampler` (this repo's C++ sampler, shared with the C++
runners) when importable. The torch implementation below is a TEMPORARY
FALLBACK with the same parameters; remove it once llm_tokenizers is a
dependency of //torchchat.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch


class Sampler:
    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
    ):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if top_k < 0:
            raise ValueError("top_k must be >= 0")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.min_p, self.repetition_penalty = min_p, repetition_penalty
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self._native = None
        try:
            import llm_tokenizers

            self._native = llm_tokenizers.Sampler(
                temperature, top_k, top_p, min_p, repetition_penalty, seed
            )
        except ImportError:
            pass
        self._gen = torch.Generator()
        self._gen.manual_seed(seed)

    def sample(self, logits: torch.Tensor, recent: Sequence[int] = ()) -> int:
        logits = logits.reshape(-1).float()
        if self._native is not None:
            return int(self._native.sample(logits.detach().cpu().numpy(), list(recent)))
        return self._torch_sample(logits, recent)

    # --- TEMPORARY FALLBACK ------------------------------------------------
    def _torch_sample(self, logits: torch.Tensor, recent: Sequence[int]) -> int:
        logits = logits.cpu().clone()
        if self.repetition_penalty != 1.0 and len(recent):
            idx = torch.tensor(sorted(set(recent)), dtype=torch.long)
            v = logits[idx]
            logits[idx] = torch.where(v > 0, v / self.repetition_penalty, v * self.repetition_penalty)
        if self.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
            logits[logits < kth] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        if self.min_p > 0:
            probs[probs < self.min_p * probs.max()] = 0
        if self.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            cum = torch.cumsum(sp, 0)
            drop = cum - sp > self.top_p  # keep the token that crosses top_p
            sp[drop] = 0
            probs = torch.zeros_like(probs).scatter_(0, si, sp)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self._gen))
