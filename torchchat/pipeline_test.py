"""--pipeline-parallel 2 against one process: the same greedy ids, and each
rank holding only its own half of the layers.

Two local ranks (pipeline.launch_local: a spawned process for rank 1, this
one as rank 0) over gloo on 127.0.0.1 / lo. The prompts are longer than two
micro-batches, so prefill goes through the pipeline in chunks; a second
turn on the same slot extends the first (its cache reused, as chat does).

The server's SlotPipeline: three slots stepped together give the ids and
hidden states of SlotModel in one process; a stage that raises fails its
step and leaves the ranks in step; a rank that hangs while no step runs
breaks the pipeline within --pipeline-timeout-s (rank 0's heartbeat; it
says so), and shutting down does not hang.
"""

import functools
import os
import signal
import tempfile
import time
import unittest
from pathlib import Path

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch

from testing import gguf_blocks
from torchchat import loading, pipeline, registry
from torchchat.checkpoint import load_checkpoint, load_native
from torchchat.checkpoint.base import in_stage
from torchchat.generate import Slot, argmax, decode
from torchchat.model import attend_filled_cache
from torchchat.slots import SlotModel

CONTEXT = 192


def two_turns(model) -> list[int]:
    """Greedy ids of two turns on one slot: a prompt of 70 ids, then the
    conversation so far plus 40 more."""
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    first = torch.randint(2, vocab, (70,), generator=g).tolist()
    more = torch.randint(2, vocab, (40,), generator=g).tolist()
    slot = Slot(model)
    out = list(decode(slot, first, argmax, 12))
    out += decode(slot, first + out + more, argmax, 12)
    return out


def one_process(path: Path) -> list[int]:
    """The whole model in this process, at the ranks' one thread each (two
    local ranks on this 2-core machine): SDPA splits its sums by threads,
    and the int8 decode activations can round such a difference into a
    visible one (the built-in model at 1 and at 2 threads picks another id
    by the 8th token of this prompt, in one process too)."""
    model, _ = load_native(load_checkpoint(path), CONTEXT)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
    try:
        return two_turns(attend_filled_cache(model))
    finally:
        torch.set_num_threads(threads)


def stage_bytes(path: Path, layers: range) -> int:
    """What a stage reads of the file: its own tensors (a tied output is
    the embedding's bytes, counted once)."""
    ckpt = load_checkpoint(path)
    seen, total = set(), 0
    for name, t in ckpt.gguf.items():
        if in_stage(name, ckpt.config, layers) and id(t.blocks) not in seen:
            seen.add(id(t.blocks))
            total += t.blocks.nbytes
    return total


def run_pipeline(path: Path, tokenizer: Path | None) -> tuple[list[int], list[dict]]:
    options = loading.LoadOptions(
        checkpoint=path, tokenizer=tokenizer, compile="none", max_seq_length=CONTEXT, pipeline=2
    )
    rank, procs = pipeline.launch_local(2, functools.partial(loading.serve_stage, options))
    try:
        pipe = loading.load(options).model
        ids = two_turns(pipe)
    finally:
        reports = pipeline.shutdown(rank)
        for p in procs:
            p.join(60)
    return ids, reports


# A slots step at this position fails on rank 1 (flaky_stage).
FAIL_AT = 150
# --pipeline-timeout-s of the slots test: long beside its steps (a few ms),
# short beside the test.
TIMEOUT_S = 5


def flaky_stage(options: loading.LoadOptions) -> None:
    """Rank 1 of the slots test: its stage raises on a step at FAIL_AT."""
    run_slots = pipeline.StageModel.run_slots

    def failing(self, x, entries, hidden=False):
        if int(entries[0, 2]) == FAIL_AT:
            raise RuntimeError("injected stage failure")
        return run_slots(self, x, entries, hidden)

    pipeline.StageModel.run_slots = failing
    loading.serve_stage(options)


def slot_steps(model, vocab: int) -> tuple[list[list[int]], list[torch.Tensor], torch.Tensor]:
    """Greedy ids of three slots stepped together (SlotModel's
    forward_slots): prompts of 70, 10 and 40 ids prefilled in one step, then
    12 decode steps of all three (slot 1 verifying two ids at once in the
    first); every step's logits; and slot 2's prompt's hidden states."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in (70, 10, 40)]
    logits = model.forward_slots([(s, p, 0) for s, p in enumerate(prompts)])
    steps = [logits]
    ids = [[int(x)] for x in logits.argmax(-1)]
    pos = [len(p) for p in prompts]
    for step in range(12):
        entries = []
        for s in range(3):
            if s == 1 and step == 0:
                entries.append((s, [ids[s][-1], 7], pos[s], True))
            else:
                entries.append((s, [ids[s][-1]], pos[s]))
        out = model.forward_slots(entries)
        steps.append(out)
        row = -1
        for s in range(3):
            n = len(entries[s][1])
            row += n if len(entries[s]) > 3 else 1  # its last row
            pos[s] += n
            ids[s].append(int(out[row].argmax()))
    (hidden,) = model.hidden_slots([(2, prompts[2], 0)])
    return ids, steps, hidden


class PipelineTest(unittest.TestCase):
    def check(self, path: Path, tokenizer: Path | None = None) -> None:
        want = one_process(path)
        got, reports = run_pipeline(path, tokenizer)
        self.assertEqual(got, want)
        n = load_checkpoint(path).config.n_layers
        halves = pipeline.split_layers(n, 2)
        self.assertEqual([len(h) for h in halves], [n // 2, n - n // 2])
        for r, layers in zip(reports, halves):
            self.assertEqual(r["layers"], [layers.start, layers.stop])
            # Only its own tensors: the bytes of its layers (and embedding
            # or output), never the other half's.
            self.assertEqual(r["weight_bytes"], stage_bytes(path, layers))
        whole = stage_bytes(path, range(n))
        for r in reports:
            self.assertLess(r["weight_bytes"], whole)

    def test_tiny_gguf(self):
        with tempfile.TemporaryDirectory() as d:
            path = gguf_blocks.write_model(
                Path(d) / "tiny.gguf", {"*": "Q4_1", "token_embd.weight": "Q8_0"}, n_layers=4
            )
            tok = Path(d) / "tokenizer.json"
            from testing.tiny_model import write_tokenizer

            write_tokenizer(Path(d))
            self.check(path, tok)

    def test_builtin_model(self):
        # SmolLM2-135M-Instruct's Q4_1 GGUF, 30 layers, tied embedding:
        # rank 1's output reads the embedding's bytes too.
        self.check(registry.model_path(registry.resolve(registry.DEFAULT_MODEL)))

    def test_slots(self):
        with tempfile.TemporaryDirectory() as d:
            path = gguf_blocks.write_model(
                Path(d) / "tiny.gguf", {"*": "Q4_1", "token_embd.weight": "Q8_0"}, n_layers=4
            )
            from testing.tiny_model import write_tokenizer

            tok = write_tokenizer(Path(d))
            model, _ = load_native(load_checkpoint(path), CONTEXT)
            threads = torch.get_num_threads()
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
            try:
                want_ids, want_logits, want_hidden = slot_steps(
                    SlotModel(model, 3), model.config.vocab_size
                )
            finally:
                torch.set_num_threads(threads)
            options = loading.LoadOptions(
                checkpoint=path,
                tokenizer=tok,
                compile="none",
                max_seq_length=CONTEXT,
                pipeline=2,
                pipeline_timeout_s=TIMEOUT_S,
            )
            rank, procs = pipeline.launch_local(2, functools.partial(flaky_stage, options))
            try:
                slots = pipeline.SlotPipeline(loading.load(options).model, 3)
                # Rank 1's stage raises: the step fails, on rank 0, saying why.
                with self.assertRaisesRegex(pipeline.StageFailed, "rank 1: .*injected"):
                    slots.forward_slots([(2, [5, 6], FAIL_AT)])
                # Rank 0's own stage refuses a step: nothing went out.
                with self.assertRaisesRegex(pipeline.StageFailed, "slot 3 out of range"):
                    slots.forward_slots([(3, [5], 0)])
                self.assertIsNone(slots.problem())
                # The ranks are still in step: one process's ids.
                got_ids, got_logits, got_hidden = slot_steps(slots, model.config.vocab_size)
                self.assertEqual(got_ids, want_ids)
                # Every row is the one asked for (a random model's argmax
                # alone can miss a wrong row).
                for got, want in zip(got_logits, want_logits):
                    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
                torch.testing.assert_close(got_hidden, want_hidden, atol=1e-4, rtol=1e-4)
                # A rank that hangs while no step runs: rank 0's heartbeat
                # finds it within the timeout, and the next step fails at once.
                os.kill(procs[0].pid, signal.SIGSTOP)
                stopped = time.monotonic()
                while slots.problem() is None and time.monotonic() - stopped < TIMEOUT_S + 30:
                    time.sleep(0.1)
                self.assertLess(time.monotonic() - stopped, TIMEOUT_S + 30)
                self.assertIn(f"no answer within {TIMEOUT_S} s", slots.problem() or "")
                with self.assertRaisesRegex(pipeline.PipelineLost, "pipeline rank lost"):
                    slots.forward_slots([(0, [5], 0)])
                procs[0].kill()
                procs[0].join(30)
            finally:
                pipeline.shutdown(rank)
                for p in procs:
                    p.join(60)

    def test_slot_chunks(self):
        pieces = [(0, list(range(40)), 5, 1), (1, [7], 9, 1), (2, list(range(30)), 0, 2)]
        chunks = pipeline.slot_chunks(pieces, 32)
        self.assertEqual([sum(len(p[1]) for p in c) for c in chunks], [32, 39])
        self.assertEqual(chunks[0], [(0, list(range(32)), 5, 0)])
        self.assertEqual(
            chunks[1],
            [(0, list(range(32, 40)), 37, 1), (1, [7], 9, 1), (2, list(range(30)), 0, 2)],
        )
        # An entry cut in two that wants every row wants them in each piece.
        (a,), (b,) = pipeline.slot_chunks([(0, list(range(64)), 0, 2)], 32)
        self.assertEqual((a[3], b[3], b[2]), (2, 2, 32))
        self.assertEqual(pipeline.slot_chunks(pieces, 0), [pieces])

    def test_microbatches(self):
        self.assertEqual(pipeline.microbatches(70, 32), [(0, 32), (32, 70)])
        self.assertEqual(pipeline.microbatches(63, 32), [(0, 63)])
        self.assertEqual(pipeline.microbatches(96, 32), [(0, 32), (32, 64), (64, 96)])
        self.assertEqual(pipeline.microbatches(5, 0), [(0, 5)])

    def test_split_layers(self):
        self.assertEqual(pipeline.split_layers(5, 2), [range(0, 3), range(3, 5)])
        with self.assertRaises(pipeline.PipelineError):
            pipeline.split_layers(2, 3)


if __name__ == "__main__":
    unittest.main()
