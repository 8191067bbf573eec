"""Slots: one batched forward over many sequences, each in its own row of
the KV cache (the server's engine, and a .pt2 with slots)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from torchchat.attention import AttentionRule, attend, attend_rows, within_window
from torchchat.config import ConfigError
from torchchat.model import Images, Model

# One entry of a batch: (slot, first token index, token count, start position).
Span = tuple[int, int, int, int]


@dataclass
class SlotBatch:
    """What one batched forward runs: each entry is (slot, ids, start).

    Tokens of all entries are laid out as one sequence [1, T] so that
    ExecuTorch's Transformer applies RoPE per token from `input_pos` (it has no
    per-row positions); only attention needs to know which slot a token
    belongs to, and SlotKVCache/SlotSDPA read that from here.
    """

    slots: torch.Tensor  # [T] the slot of each token
    # Per entry; SlotSDPA needs them, MaskedSlotSDPA (traced) does not.
    spans: list[Span] | None


class SlotKVCache(nn.Module):
    """ExecuTorch's static KVCache with one row per slot; writes each token's
    K/V at its own slot and position."""

    k_cache: Tensor
    v_cache: Tensor

    # `like` is ExecuTorch's KVCache, which ships no types.
    def __init__(self, like: Any, n_slots: int, plan: SlotPlan):
        super().__init__()
        _, heads, length, head_dim = like.k_cache.shape
        shape = (n_slots, heads, length, head_dim)
        kw = {"dtype": like.k_cache.dtype, "device": like.k_cache.device}
        self.register_buffer("k_cache", torch.zeros(shape, **kw), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, **kw), persistent=False)
        self.plan = plan

    def update(self, input_pos: torch.Tensor, k_val: torch.Tensor, v_val: torch.Tensor) -> tuple:
        slots = self.plan.batch.slots
        # k_val is [1, heads, T, head_dim]; the indexed view is [T, heads, head_dim].
        self.k_cache[slots, :, input_pos] = k_val[0].transpose(0, 1)
        self.v_cache[slots, :, input_pos] = v_val[0].transpose(0, 1)
        return self.k_cache, self.v_cache


class _SlotAttention(nn.Module):
    """ExecuTorch's SDPA interface over a SlotKVCache; `attend` is the
    attention of the step's tokens, [1, heads, T, head_dim]."""

    def __init__(self, dim: int, plan: SlotPlan, rule: AttentionRule | None = None):
        super().__init__()
        self.dim = dim
        self.plan = plan
        self.rule = rule

    def forward(
        self,
        input_pos: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bsz: int,
        seqlen: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        y = self.attend(input_pos, q, k, v, mask)
        return y.transpose(1, 2).reshape(bsz, seqlen, self.dim)

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


class SlotSDPA(_SlotAttention):
    """FilledCacheSDPA per slot: each entry's queries attend over its own slot's
    cache up to its last position, with the same shapes (and so the same
    arithmetic) as a batch-1 FilledCacheSDPA call for that sequence. In
    float32, torchchat::row_sdpa does that for the whole step (attend_rows):
    each row of an entry of up to 16 ids alone, longer entries by torch's
    SDPA over their own slot, as the loop below."""

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        rows = attend_rows(q, k, v, mask, self.plan.batch.slots, self.rule)
        if rows is not None:
            return rows
        spans = self.plan.batch.spans
        if spans is None:
            raise ValueError("SlotSDPA needs the batch's spans")
        out = []
        for slot, first, n, start in spans:
            end = start + n
            y = attend(
                q[:, :, first : first + n],
                k[slot : slot + 1, :, :end],
                v[slot : slot + 1, :, :end],
                mask[first : first + n, :end],
                self.rule,
            )
            out.append(y)
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


class MaskedSlotSDPA(_SlotAttention):
    """SlotSDPA as one traceable graph, for a .pt2 with slots (export_llm --slots).

    SlotSDPA loops over the batch's entries in Python, which torch.export
    cannot trace. Here every token attends over the filled part of all the
    slots' caches at once, laid out as one sequence of slots x end keys, with
    a mask that keeps only its own slot up to its own position. Masked keys
    weigh exactly zero, so it is the same softmax, summed in another order.
    The other slots' keys are wasted multiplications, but every filled cache
    entry is still read once per step, as the per-slot loop reads it (and
    copied once, to lay the slots out as one sequence).

    In float32 the step goes to torchchat::row_sdpa instead (attend_rows),
    as SlotSDPA's does: the same arithmetic as the eager server, each row
    of a short entry (a decode row, a speculative check) the bits of that
    row alone, and no other slot's keys read.
    """

    def attend(self, input_pos: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        slots = self.plan.batch.slots
        rows = attend_rows(q, k, v, mask, slots, self.rule)
        if rows is not None:
            return rows
        n_slots, heads, end, head_dim = k.shape
        if self.rule is None or self.rule.softcap is None:
            # Only the rows up to the highest slot in the step, each up to
            # the last position in it (the engine fills low slots first). A
            # capped layer keeps them all, as FilledCacheSDPA does.
            # Unbacked sizes when traced, so cast, not int().
            end = cast(int, input_pos.max().item() + 1)
            torch._check(end >= 1)
            torch._check(end <= k.shape[2])
            n_slots = cast(int, slots.max().item() + 1)
            torch._check(n_slots >= 1)
            torch._check(n_slots <= k.shape[0])
        k = k[:n_slots, :, :end].transpose(0, 1).reshape(1, heads, n_slots * end, head_dim)
        v = v[:n_slots, :, :end].transpose(0, 1).reshape(1, heads, n_slots * end, head_dim)
        key = torch.arange(n_slots * end, device=slots.device)
        allowed = ((key // end)[None, :] == slots[:, None]) & (
            (key % end)[None, :] <= input_pos[:, None]
        )
        allowed = within_window(allowed, input_pos, key % end, self.rule)
        return attend(q, k, v, allowed, self.rule)


class SlotPlan:
    """Holds the current SlotBatch for every layer's SlotKVCache/SlotSDPA."""

    batch: SlotBatch


class SlotModel(nn.Module):
    """A Model whose KV cache has `n_slots` independent rows.

    `forward_slots([(slot, ids, start), ...])` runs every entry in one
    forward and returns the last-position logits of each, [entries, vocab]
    (an entry `(slot, ids, start, True)` gets a row for each of its ids).
    Weights and every module but the cache and SDPA stay ExecuTorch's.

    `traceable=True` attends with MaskedSlotSDPA, so that `forward` (the
    same batch as tensors) can be exported; eager serving keeps SlotSDPA,
    whose per-slot arithmetic equals the batch-1 model's. Traceable, its
    forward also returns the hidden states it turned into those logits: a
    package with slots has them as its second output, which the server's
    /v1/embeddings reads (with `last` naming every token).
    """

    def __init__(self, model: Model, n_slots: int, traceable: bool = False):
        super().__init__()
        self.model = model
        self.n_slots = n_slots
        self.max_seq_length = model.max_seq_length
        self.plan = SlotPlan()
        self.traceable = traceable
        sdpa = MaskedSlotSDPA if traceable else SlotSDPA
        for layer in model.transformer.layers:
            attn = layer.attention
            if not hasattr(attn, "kv_cache"):
                raise ConfigError("this attention has no KV cache to give slots")
            attn.kv_cache = SlotKVCache(attn.kv_cache, n_slots, self.plan)
            rule = getattr(attn.SDPA, "rule", None)
            attn.SDPA = sdpa(attn.n_local_heads * attn.head_dim, self.plan, rule)

    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        slots: torch.Tensor,
        last: torch.Tensor,
        spans: list[Span] | None = None,
        images: Images = (),
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """tokens [1, T] at positions input_pos [T] in slots [T]; the logits
        of the tokens at `last` [E], [E, vocab], and when traceable their
        hidden states too, [E, dim]. SlotSDPA also needs `spans`. `images`
        (offsets into tokens) open the causal mask over their positions for
        every slot: a forward with images runs alone."""
        self.plan.batch = SlotBatch(slots, spans)
        t = self.model.transformer
        options = {"input_pos": input_pos, "last_valid_token_pos": last}
        if images:
            with self.model.image_blocks(input_pos, images):
                logits = t(None, options, self.model.embed(tokens, images))
            return self._rows(logits, tokens, last)
        if not self.traceable or not t.apply_output:
            return self._rows(t(tokens, options), tokens, last)
        # The Transformer without its output layer gives the final norm's
        # output; the output layer (and a softcap) then runs here, on it.
        t.apply_output = False
        try:
            h = t(tokens, options)
        finally:
            t.apply_output = True
        logits = t.output(h)
        cap = getattr(t, "final_softcap", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return self._rows(logits, tokens, last), self._rows(h, tokens, last)

    @staticmethod
    def _rows(x: torch.Tensor, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == tokens.shape[1] != last.shape[0]:
            x = x[:, last]  # full_logits
        return x.reshape(last.shape[0], -1)

    def forward_slots(self, entries: list, images: Images = ()) -> torch.Tensor:
        """`images` belong to the only entry (offsets into its ids)."""
        if images and len(entries) != 1:
            raise ValueError("a forward with images runs one slot")
        device = next(self.model.parameters()).device
        tokens, pos, slots, last, spans = slot_inputs(
            entries, self.n_slots, self.max_seq_length, device
        )
        out = self.forward(tokens, pos, slots, last, spans, images=images)
        return out[0] if isinstance(out, tuple) else out

    def hidden_slots(self, entries: list) -> list[torch.Tensor]:
        """Like forward_slots, but each entry's last hidden state at every
        one of its tokens, [len(ids), dim]: the final norm's output, which
        the output layer would turn into logits (transformers'
        `last_hidden_state`, llama.cpp's embeddings). The same forward, with
        ExecuTorch's Transformer told to skip its output layer."""
        device = next(self.model.parameters()).device
        tokens, pos, slots, _, spans = slot_inputs(
            entries, self.n_slots, self.max_seq_length, device
        )
        every = torch.arange(tokens.shape[1], device=device)
        transformer = self.model.transformer
        transformer.apply_output = False
        try:
            h = self.forward(tokens, pos, slots, every, spans)
        finally:
            transformer.apply_output = True
        assert isinstance(h, Tensor)  # without the output layer: hidden states only
        return [h[first : first + n] for _, first, n, _ in spans]


def slot_inputs(
    entries: list, n_slots: int, max_seq_length: int, device: Any = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Span]]:
    """SlotModel.forward's arguments for [(slot, ids, start[, every]), ...]:
    an entry with `every` true asks for the logits after each of its ids
    (speculative decoding verifies a draft so), the others for their last."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    last: list[int] = []
    spans: list[Span] = []
    for entry in entries:
        slot, toks, start = entry[:3]
        every = len(entry) > 3 and entry[3]
        if not 0 <= slot < n_slots:
            raise ValueError(f"slot {slot} out of range (0..{n_slots - 1})")
        if start + len(toks) > max_seq_length:
            raise ValueError(f"slot {slot}: {start}+{len(toks)} exceeds the cache")
        first = len(ids)
        spans.append((slot, first, len(toks), start))
        ids.extend(toks)
        pos.extend(range(start, start + len(toks)))
        slots.extend([slot] * len(toks))
        last.extend(range(first, len(ids)) if every else [len(ids) - 1])

    def t(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    return t([ids]), t(pos), t(slots), t(last), spans
