"""The generation loop shared by `generate`, `chat` and exported artifacts.

A backend is anything with `forward(tokens[1, T], input_pos[T]) -> logits`
(last position) and a `max_seq_length`. The loop prefills the whole prompt
in one call, then decodes one token per call. It remembers which tokens sit
in the KV cache, so a follow-up prompt that extends them (the next chat turn,
another sample of the same prompt) only prefills the new suffix.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import torch


class ContextOverflow(ValueError):
    pass


@dataclass
class Stats:
    prompt_tokens: int
    prefill_tokens: int
    new_tokens: int
    ttft_s: float
    prefill_tok_s: float
    decode_tok_s: float
    total_s: float
    peak_rss_mib: float
    stop_reason: str  # "eos", "max_new_tokens", "context", "interrupted"

    def to_json(self):
        return asdict(self)

    def line(self) -> str:
        return (
            f"[{self.new_tokens} tokens | time to first token {self.ttft_s * 1000:.0f} ms | "
            f"prefill {self.prefill_tokens} tok at {self.prefill_tok_s:.1f} tok/s | "
            f"decode {self.decode_tok_s:.1f} tok/s | peak RSS {self.peak_rss_mib:.0f} MiB | "
            f"stop: {self.stop_reason}]"
        )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Generator:
    def __init__(self, backend, tokenizer, device: str = "cpu", decode_fn=None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.device = device
        self.max_seq_length = backend.max_seq_length
        # A compiled single-token step, when --compile asks for one.
        self._decode = decode_fn or backend
        self.cached: List[int] = []  # tokens whose K/V are in the cache

    def _forward(self, fn, ids: Sequence[int], start: int) -> torch.Tensor:
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + len(ids), dtype=torch.long, device=self.device)
        return fn(tokens, pos)

    def check_fits(self, prompt: Sequence[int]) -> None:
        if len(prompt) >= self.max_seq_length:
            raise ContextOverflow(
                f"prompt is {len(prompt)} tokens but the context holds "
                f"{self.max_seq_length} (raise --max-seq-length or shorten the prompt)"
            )

    @torch.inference_mode()
    def generate(
        self,
        prompt: Sequence[int],
        sampler,
        max_new_tokens: int,
        on_text: Optional[Callable[[str], None]] = None,
        stop_ids: Sequence[int] = (),
    ):
        """Returns (new token ids, Stats); streams decoded text to on_text."""
        self.check_fits(prompt)
        prompt = list(prompt)
        # Reuse the cached prefix, but always run at least the last token.
        common = 0
        limit = min(len(self.cached), len(prompt) - 1)
        while common < limit and self.cached[common] == prompt[common]:
            common += 1
        self.cached = self.cached[:common]
        stream = self.tokenizer.stream_decoder()
        stop = set(stop_ids or self.tokenizer.eos_ids)
        out: List[int] = []
        reason = "max_new_tokens"
        t0 = time.perf_counter()
        t_first = t_prefill = None
        try:
            logits = self._forward(self.backend, prompt[common:], common)
            self.cached = prompt[:]
            t_prefill = time.perf_counter()
            pos = len(prompt)
            recent = prompt[-64:]
            while len(out) < max_new_tokens:
                tok = sampler.sample(logits, recent)
                if t_first is None:
                    t_first = time.perf_counter()
                if tok in stop:
                    reason = "eos"
                    break
                out.append(tok)
                recent = (recent + [tok])[-64:]
                if on_text:
                    text = stream.push(tok)
                    if text:
                        on_text(text)
                if pos >= self.max_seq_length:
                    reason = "context"
                    break
                if len(out) == max_new_tokens:
                    break
                logits = self._forward(self._decode, [tok], pos)
                self.cached.append(tok)
                pos += 1
        except KeyboardInterrupt:
            reason = "interrupted"
        if on_text:
            tail = stream.flush()
            if tail:
                on_text(tail)
        t_end = time.perf_counter()
        t_prefill = t_prefill or t_end
        t_first = t_first or t_end
        n_prefill = len(prompt) - common
        decode_steps = max(len(out) - 1, 0)
        decode_s = t_end - t_first
        return out, Stats(
            prompt_tokens=len(prompt),
            prefill_tokens=n_prefill,
            new_tokens=len(out),
            ttft_s=t_first - t0,
            prefill_tok_s=n_prefill / max(t_prefill - t0, 1e-9),
            decode_tok_s=decode_steps / decode_s if decode_steps and decode_s > 0 else 0.0,
            total_s=t_end - t0,
            peak_rss_mib=peak_rss_mib(),
            stop_reason=reason,
        )
