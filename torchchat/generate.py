"""The generation core every Python path shares.

generate and chat, export's quality checks and the equivalence tests all run
one loop, `decode()`, over one model interface, `LLMModel`. It is the Python
counterpart of runner/common: `LLMModel` is model.h, `decode()` is
TextLLMRunner's loop, `Stats` has the fields of stats.h (ExecuTorch's names),
and `ChatSession` keeps the same chat policy as chat_session.h.

A `Slot` is one sequence in a model's KV cache: the tokens whose K/V it holds,
hence its next position, and a step function. A batched engine holds several
slots over one batched model, each with its own position and sampler (and so
its own RNG stream); the loop below never looks past its own slot.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from PIL.Image import Image

    from torchchat.tokenizer import ChatTemplate, Tokenizer
    from torchchat.vision import ImageSpan, ImageTower

# What an exported artifact or the eager model provides. forward returns the
# logits of the last position, [1, vocab].
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Picks the next token from logits given every token so far; the tokenizers
# library's Sampler applies its repetition window itself.
Pick = Callable[[torch.Tensor, Sequence[int]], int]
# Speculative decoding's drafter: up to k guesses at the ids that follow
# `history` (every token so far); [] when it has none.
Draft = Callable[[Sequence[int], int], list[int]]
# Adaptive draft length: the next k, given the last k and how many guesses
# the last verified draft had and how many of them were kept.
AdaptK = Callable[[int, int, int], int]


class LLMModel(Protocol):
    max_seq_length: int

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor: ...


class VerifyingModel(LLMModel, Protocol):
    """A model that can also return every position's logits, [T, vocab]:
    what speculative decoding verifies a draft with (the eager Model, a .pt2
    with slots or full logits)."""

    def forward_all(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor: ...


class ContextOverflow(ValueError):
    pass


def now_ms() -> float:
    return time.monotonic() * 1e3


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# Why a generation ended: a stop id, the token budget, a full context, a stop
# request (on_text, a stop string, a cancelled request), Ctrl-C. The C++
# runners' words too (runner/common/stats.h's kStopReasons).
STOP_REASONS = ("eos", "max_new_tokens", "context", "stopped", "interrupted")


@dataclass
class Stats:
    """One generation, with the fields (and JSON) of runner/common/stats.h.

    num_prompt_tokens counts the tokens this call prefilled: a chat turn or a
    prompt that extends what the cache holds prefills only the new part.
    num_generated_tokens counts every sampled token, a final EOS included.
    """

    model_load_start_ms: float = 0.0
    model_load_end_ms: float = 0.0
    inference_start_ms: float = 0.0
    prompt_eval_end_ms: float = 0.0
    first_token_ms: float = 0.0
    inference_end_ms: float = 0.0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    # Speculative decoding: ids drafted and verified, and how many of them
    # the model's own picks kept (each kept one saves a forward).
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    peak_rss_bytes: int = 0
    stop_reason: str = ""  # one of STOP_REASONS

    @property
    def load_s(self) -> float:
        return (self.model_load_end_ms - self.model_load_start_ms) / 1e3

    @property
    def ttft_s(self) -> float:
        return (self.first_token_ms - self.inference_start_ms) / 1e3

    @property
    def prefill_tok_s(self) -> float:
        ms = self.prompt_eval_end_ms - self.inference_start_ms
        return self.num_prompt_tokens * 1e3 / ms if ms > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # The first token comes from prefill; decode covers the rest.
        ms = self.inference_end_ms - self.first_token_ms
        n = self.num_generated_tokens - 1
        return n * 1e3 / ms if ms > 0 and n > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out.update(
            ttft_s=self.ttft_s, prefill_tok_s=self.prefill_tok_s, decode_tok_s=self.decode_tok_s
        )
        return out

    def summary(self) -> str:
        """The line the C++ runners print, so logs read the same."""
        draft = ""
        if self.num_draft_tokens:
            draft = (
                f", draft accepted {self.num_accepted_tokens}/{self.num_draft_tokens} "
                f"({self.acceptance_rate:.0%})"
            )
        return (
            f"load {self.load_s:.2f} s, ttft {self.ttft_s:.3f} s, prefill "
            f"{self.num_prompt_tokens} tok at {self.prefill_tok_s:.1f} tok/s, decode "
            f"{self.num_generated_tokens} tok at {self.decode_tok_s:.1f} tok/s{draft}, peak rss "
            f"{self.peak_rss_bytes / 1048576:.0f} MiB, stop {self.stop_reason}"
        )


def check_fits(max_seq_length: int, n_new: int, start: int = 0) -> None:
    """Raises ContextOverflow unless `n_new` tokens after `start` leave room
    for at least one generated token."""
    if start + n_new >= max_seq_length:
        used = f" and {start} are in use" if start else ""
        raise ContextOverflow(
            f"the prompt is {n_new} tokens{used}, but the context holds "
            f"{max_seq_length} (raise --max-seq-length or shorten the prompt)"
        )


class Slot:
    """One sequence's place in a model's KV cache.

    `tokens` are the ids whose K/V sit at positions 0..len-1. Positions index
    the cache directly, so moving back (truncate) needs no cache reset.

    With a `draft` and `draft_k` > 0, decode() on this slot speculates (see
    there); the model must then be a VerifyingModel. With `adapt_k`, each
    generation starts at `draft_k` guesses per forward and moves it as
    `adapt_k` says after each verified draft.
    """

    def __init__(
        self,
        model: LLMModel,
        step: Forward | None = None,
        device: str = "cpu",
        draft: Draft | None = None,
        draft_k: int = 0,
        adapt_k: AdaptK | None = None,
    ):
        self.model = model
        # A compiled single-token step, when one is given (--compile).
        self._step = step if step is not None else model
        self.device = device
        self.max_seq_length: int = model.max_seq_length
        self.tokens: list[int] = []
        # Images whose soft tokens the cache holds, at their positions.
        self.images: list[ImageSpan] = []
        self.draft = draft
        self.draft_k = draft_k
        self.adapt_k = adapt_k

    @property
    def pos(self) -> int:
        return len(self.tokens)

    def check_fits(self, n_new: int, start: int | None = None) -> None:
        check_fits(self.max_seq_length, n_new, self.pos if start is None else start)

    def reuse(self, prompt: Sequence[int], images: Sequence[ImageSpan] = ()) -> int:
        """Keeps the cached prefix `prompt` shares (never all of it: the last
        token must run to give logits) and returns its length. An image's
        soft tokens count as shared only where the cache holds the same
        image (by key) at the same place, and are kept or run whole; the
        prompt's `images` are then the slot's."""
        common, limit = 0, min(len(self.tokens), len(prompt) - 1)
        while common < limit and self.tokens[common] == prompt[common]:
            common += 1
        held = {(h.start, h.key) for h in self.images}
        for span in [*self.images, *images]:
            same = (span.start, span.key) in held and any(
                (s.start, s.key) == (span.start, span.key) for s in images
            )
            if span.start < common and (not same or common < span.end):
                common = span.start
        self.truncate(common)
        self.images += [s for s in images if s.start >= common]
        return common

    def truncate(self, n: int) -> None:
        del self.tokens[n:]
        self.images = [h for h in self.images if h.end <= n]

    def _run(self, fn: Forward, ids: Sequence[int]) -> torch.Tensor:
        start = self.pos
        end = start + len(ids)
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        pos = torch.arange(start, end, dtype=torch.long, device=self.device)
        spans = [s for s in self.images if s.start < end and s.end > start]
        if any(s.start < start or s.end > end for s in spans):
            raise ValueError("an image's soft tokens must run in one forward")
        if spans:
            images = [(s.start - start, s.embeds) for s in spans]
            # Only a model with a vision tower meets spans, and its forward takes them.
            logits = fn(tokens, pos, images=images)  # type: ignore[call-arg]
        else:
            logits = fn(tokens, pos)
        self.tokens.extend(int(i) for i in ids)
        return logits

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Runs `ids` at the slot's next positions; logits of the last one."""
        if not ids:
            raise ValueError("nothing to prefill")
        self.check_fits(len(ids))
        return self._run(self.model, ids)

    def step(self, token: int) -> torch.Tensor:
        return self._run(self._step, [token])

    def verify(self, ids: Sequence[int]) -> torch.Tensor:
        """Runs `ids` at the slot's next positions as one forward; the
        logits after each, [len(ids), vocab]."""
        # Only a model that can verify (LLMModel.forward_all) is given a drafter.
        return self._run(self.model.forward_all, ids)  # type: ignore[attr-defined]


@torch.inference_mode()
def decode(
    slot: Slot,
    prompt: Sequence[int],
    pick: Pick,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    stats: Stats | None = None,
    images: Sequence[ImageSpan] = (),
) -> Generator[int, None, None]:
    """The generation loop: yields each sampled id, a final stop id included.

    Prefills only the part of `prompt` the slot does not hold yet, then
    samples and steps until a stop id, `max_new_tokens` or a full context.
    A consumer may stop early by closing the iterator (or breaking out);
    `stats` is complete once the iterator is exhausted or closed.

    On a slot with a drafter (speculative decoding), each step runs the
    sampled id and the drafter's guesses at the ids after it as one
    forward, which gives the logits after each. The next picks are then
    made from those logits, exactly as plain decoding would make them, and
    each pick that equals the next guess keeps it (its logits are already
    there); the first that differs drops the rest of the draft (the slot
    moves back past them) and is run as usual. Every id is thus picked by
    `pick` from the model's logits after the same ids, so the output is
    plain decoding's (up to the rounding of a forward over several tokens),
    sampling included: a guess is kept exactly when the draw lands on it,
    which is rejection sampling for a drafter that proposes one id.

    `images` put embeddings at the prompt's soft-token positions
    (torchchat.vision); the prefill runs each image's tokens in one forward.
    """
    stats = stats if stats is not None else Stats()
    prompt = [int(i) for i in prompt]
    stop = set(stop_ids)
    stats.inference_start_ms = now_ms()
    stats.stop_reason = "max_new_tokens"
    common = slot.reuse(prompt, images)
    history = list(prompt)
    n = 0
    # Drafted ids the slot has run past the last pick, each with the logits
    # after it; how many the draft had; the guesses the next draft may make.
    ahead: list[tuple[int, torch.Tensor]] = []
    drafted, k = 0, slot.draft_k
    try:
        logits = slot.prefill(prompt[common:])
        stats.num_prompt_tokens = len(prompt) - common
        stats.prompt_eval_end_ms = now_ms()
        while n < max_new_tokens:
            tok = int(pick(logits, history))
            if n == 0:
                stats.first_token_ms = now_ms()
            n += 1
            history.append(tok)
            stats.num_generated_tokens = n
            # The positions the cache holds before tok (drafts not counted).
            held = slot.pos - len(ahead)
            kept = None
            if ahead and tok == ahead[0][0]:
                kept = ahead.pop(0)[1]
                stats.num_accepted_tokens += 1
                if not ahead and slot.adapt_k is not None:
                    k = slot.adapt_k(k, drafted, drafted)
            elif ahead:
                if slot.adapt_k is not None:
                    k = slot.adapt_k(k, drafted, drafted - len(ahead))
                slot.truncate(held)
                ahead = []
            # Decided before the yield: a consumer that stops at a stop id
            # closes the iterator there.
            done = ""
            if tok in stop:
                done = "eos"
            elif n == max_new_tokens:
                done = "max_new_tokens"
            elif held >= slot.max_seq_length:
                done = "context"
            if done:
                stats.stop_reason = done
            yield tok
            if done:
                break  # the last token never needs to run
            if kept is not None:
                logits = kept
            else:
                logits, ahead = _advance(slot, tok, history, k, max_new_tokens - n, stats)
                drafted = len(ahead)
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
        raise
    finally:
        if ahead:  # guesses never checked: the cache must not claim them
            slot.truncate(slot.pos - len(ahead))
        stats.inference_end_ms = now_ms()
        if not stats.first_token_ms:
            stats.first_token_ms = stats.prompt_eval_end_ms = stats.inference_end_ms
        stats.peak_rss_bytes = peak_rss_bytes()


def _advance(
    slot: Slot, tok: int, history: Sequence[int], k: int, left: int, stats: Stats
) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """Runs `tok`: alone, or with up to `k` of the slot's drafter's guesses
    after it, in one forward. Its logits, and each guess with the logits
    after it."""
    # At most one guess fewer than the picks left (the last pick needs no
    # guess), and within the cache.
    k = min(k, left - 1, slot.max_seq_length - slot.pos - 1)
    draft = slot.draft(history, k)[:k] if slot.draft is not None and k > 0 else []
    if not draft:
        return slot.step(tok), []
    out = slot.verify([tok, *draft])
    stats.num_draft_tokens += len(draft)
    return out[:1], [(int(d), out[i + 1 : i + 2]) for i, d in enumerate(draft)]


def argmax(logits: torch.Tensor, history: Sequence[int] = ()) -> int:
    return int(logits.reshape(-1).argmax())


def greedy(
    model: LLMModel, ids: Sequence[int], steps: int, stop_ids: Sequence[int] = ()
) -> list[int]:
    """Up to `steps` greedy tokens after `ids`, ending before a stop id."""
    out = list(decode(Slot(model), ids, argmax, steps, stop_ids))
    return out[:-1] if out and out[-1] in set(stop_ids) else out


@dataclass
class Reply:
    ids: list[int]  # without the stop id
    text: str
    stats: Stats = field(default_factory=Stats)


def generate_text(
    slot: Slot,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    pick: Pick,
    max_new_tokens: int,
    on_text: Callable[[str], bool | None] | None = None,
    stop_ids: Sequence[int] | None = None,
    images: Sequence[ImageSpan] = (),
) -> Reply:
    """decode() with the tokenizer's streaming decoder: on_text gets whole
    UTF-8 characters as they complete. A stop id is never printed.

    on_text returning True ends the reply there (stop_reason "stopped"): the
    server's stop strings and cancelled requests end a generation this way.
    Ctrl-C ends the reply with stop_reason "interrupted" instead of raising.
    """
    stats = Stats()
    stop = tuple(tokenizer.eos_ids if stop_ids is None else stop_ids)
    stream = tokenizer.stream_decoder()
    ids: list[int] = []
    pieces: list[str] = []

    def emit(text: str) -> bool:
        if text:
            pieces.append(text)
            if on_text:
                return bool(on_text(text))
        return False

    try:
        steps = decode(slot, prompt, pick, max_new_tokens, stop, stats, images)
        for tok in steps:
            if tok in stop:
                break
            ids.append(tok)
            if emit(stream.push(tok)):
                steps.close()  # completes stats before the reason is set
                stats.stop_reason = "stopped"
                return Reply(ids, "".join(pieces), stats)
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
    emit(stream.flush())
    return Reply(ids, "".join(pieces), stats)


# Room a turn keeps for its answer: min(max_new_tokens, this). The same number
# as runner/common/chat_session.h's kChatAnswerReserve.
CHAT_ANSWER_RESERVE = 16


class ChatSession:
    """Multi-turn chat over one slot, with runner/common/chat_session.h's policy.

    Each turn renders the whole conversation with the chat template; the slot
    prefills only what its cache lacks. When the conversation plus room for an
    answer outgrows the context, the oldest exchange is dropped (never the
    system prompt or the new question). A question too long even alone raises
    ContextOverflow and leaves the conversation as it was.
    """

    def __init__(
        self,
        slot: Slot,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        system_prompt: str | None = None,
        vision: ImageTower | None = None,
    ):
        self.slot = slot
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.vision = vision
        self.messages: list[dict[str, Any]] = []
        # Each message's images' (embeddings, key), in order, and their
        # (width, height): a SmolVLM image's tokens depend on its shape.
        self.images: list[list[tuple[torch.Tensor, str]]] = []
        self.sizes: list[list[tuple[int, int]]] = []
        self.dropped_last_turn = 0
        self.reset()

    def reset(self) -> None:
        self.messages = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        )
        self.images = [[] for _ in self.messages]
        self.sizes = [[] for _ in self.messages]
        self.dropped_last_turn = 0

    def _render(self) -> list[int]:
        # The template writes any bos itself.
        text = self.template.render(self.messages, add_generation_prompt=True)
        if self.vision is not None:
            sizes = [size for m in self.sizes for size in m]
            text = self.vision.expand(text, self.tokenizer, sizes)
        return self.tokenizer.encode(text, bos=False)

    def _spans(self, ids: Sequence[int]) -> list[ImageSpan]:
        if self.vision is None:
            return []
        from torchchat.vision import ImageError

        embeds = [e for m in self.images for e in m]
        try:
            return self.vision.place(ids, embeds)
        except ImageError as e:
            raise ImageError(f"the chat template's image places: {e}") from None

    def turn(
        self,
        text: str,
        pick: Pick,
        max_new_tokens: int,
        on_text: Callable[[str], None] | None = None,
        images: Sequence[Image] = (),
    ) -> Reply:
        """One exchange; `images` (PIL images) go with the question, before
        its text, as the model's template places content parts."""
        before = list(self.messages), list(self.images), list(self.sizes)
        if images and self.vision is None:
            from torchchat.vision import ImageError

            raise ImageError("this model takes no images")
        embeds = self.vision.embed(images) if images and self.vision is not None else []
        content: str | list[dict[str, str]] = text
        if embeds:
            content = [{"type": "image"} for _ in embeds] + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        self.images.append(embeds)
        self.sizes.append([im.size for im in images] if embeds else [])
        self.dropped_last_turn = 0
        first = 1 if self.system_prompt else 0
        room = self.slot.max_seq_length - min(max_new_tokens, CHAT_ANSWER_RESERVE)
        try:
            ids = self._render()
            while len(ids) > room and len(self.messages) > first + 1:
                drop = 2 if len(self.messages) - first >= 3 else 1
                del self.messages[first : first + drop]
                del self.images[first : first + drop]
                del self.sizes[first : first + drop]
                self.dropped_last_turn += 1
                ids = self._render()
            self.slot.check_fits(len(ids), 0)
            spans = self._spans(ids)
        except Exception:
            self.messages, self.images, self.sizes = before
            raise
        budget = max(1, min(max_new_tokens, self.slot.max_seq_length - len(ids)))
        reply = generate_text(self.slot, self.tokenizer, ids, pick, budget, on_text, images=spans)
        self.messages.append({"role": "assistant", "content": reply.text})
        self.images.append([])
        self.sizes.append([])
        return reply
