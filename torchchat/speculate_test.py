"""Speculative decoding with prompt lookup: the same ids as plain decoding,
greedy and seeded sampling, on the tiny random model (eager) and on its
compiled package with slots (the server's), through rollbacks, a full
context and a continued conversation; and the drafter itself."""

import os
import tempfile
import unittest

import torch

from testing import tiny_model
from torchchat.artifacts import load_pt2
from torchchat.checkpoint import load_checkpoint, load_model
from torchchat.generate import Slot, Stats, argmax, decode
from torchchat.model import attend_filled_cache
from torchchat.sampling import Sampler
from torchchat.speculate import PromptLookup

STEPS = 120


class PromptLookupTest(unittest.TestCase):
    def test_latest_longest_match(self):
        d = PromptLookup(max_ngram=2)
        # "1 2" occurred twice; the latest is followed by 7 8.
        self.assertEqual(d([1, 2, 3, 4, 1, 2, 7, 8, 9, 1, 2], 3), [7, 8, 9])
        # Only the last id matches: a 1-gram.
        self.assertEqual(d([5, 6, 5], 2), [6, 5])
        self.assertEqual(d([1, 2, 3], 4), [])
        # The history grows: only the new ids are indexed, same answers.
        d = PromptLookup(max_ngram=3)
        h = [4, 5, 6, 9, 4, 5]
        self.assertEqual(d(h, 2), [6, 9])
        self.assertEqual(d([*h, 6], 2), [9, 4])
        self.assertEqual(d([*h, 6, 1], 2), [])


def with_drafts(model, k):
    return Slot(model, draft=PromptLookup(), draft_k=k)


class SpeculativeDecodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        ckpt = tiny_model.write_checkpoint(os.path.join(tmp, "tiny"))
        cls.model = attend_filled_cache(load_model(load_checkpoint(ckpt), torch.float32, 256))
        g = torch.Generator().manual_seed(0)
        words = torch.randint(3, tiny_model.VOCAB, (12,), generator=g).tolist()
        # A prompt that repeats itself, as text to edit or summarise does.
        cls.prompts = [words * 3, torch.randint(3, tiny_model.VOCAB, (40,), generator=g).tolist()]

    def run_both(self, model, prompt, pick_factory, k, steps=STEPS, stop=()):
        plain, spec = Stats(), Stats()
        want = list(decode(Slot(model), prompt, pick_factory(), steps, stop, plain))
        got = list(decode(with_drafts(model, k), prompt, pick_factory(), steps, stop, spec))
        return want, got, plain, spec

    def test_greedy_is_plain_decoding(self):
        drafted = accepted = 0
        for prompt in self.prompts:
            for k in (1, 4, 8):
                with self.subTest(len=len(prompt), k=k):
                    want, got, plain, spec = self.run_both(self.model, prompt, lambda: argmax, k)
                    self.assertEqual(got, want)
                    self.assertEqual(spec.stop_reason, plain.stop_reason)
                    drafted += spec.num_draft_tokens
                    accepted += spec.num_accepted_tokens
        # Both paths ran: guesses kept, and guesses rolled back.
        self.assertGreater(accepted, 0)
        self.assertGreater(drafted, accepted)

    def test_seeded_sampling_is_plain_decoding(self):
        # A kept guess is a draw that landed on it: the same draws, in order.
        for seed in (1, 2, 3):
            with self.subTest(seed=seed):
                want, got, _, spec = self.run_both(
                    self.model, self.prompts[0], lambda: Sampler(0.8, 40, 0.95, 0.0, 1.0, seed), 6
                )
                self.assertEqual(got, want)
                self.assertGreater(spec.num_draft_tokens, 0)

    def test_full_context_and_summary(self):
        short = attend_filled_cache(load_model(load_checkpoint(self.tiny_dir()), torch.float32, 64))
        want, got, plain, spec = self.run_both(short, self.prompts[0], lambda: argmax, 8)
        self.assertEqual((got, spec.stop_reason), (want, plain.stop_reason))
        self.assertEqual(spec.stop_reason, "context")
        self.assertIn("draft accepted", spec.summary())
        self.assertNotIn("draft", plain.summary())

    def tiny_dir(self):
        d = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        return tiny_model.write_checkpoint(os.path.join(d, "tiny"))

    def test_the_cache_stays_true_for_the_next_turn(self):
        """A second prompt extending the first reuses the slot's cache; a
        rejected guess left in it would change the answer."""
        p1 = self.prompts[0]
        results = []
        for slot in (Slot(self.model), with_drafts(self.model, 8)):
            a = list(decode(slot, p1, argmax, 50))
            p2 = p1 + a + self.prompts[1][:10]
            b = list(decode(slot, p2, argmax, 50))
            results.append((a, b, list(slot.tokens)))
        self.assertEqual(results[0][:2], results[1][:2])
        # The slot holds only ids it was given or picked (never a guess).
        held = results[1][2]
        self.assertEqual(
            held, (p1 + results[1][0] + self.prompts[1][:10] + results[1][1])[: len(held)]
        )

    @unittest.skipUnless(os.environ.get("TINY_SLOTS"), "needs //testing:tiny_slots")
    def test_compiled_package_with_slots(self):
        """The server's compiled package verifies in row 0 with its `last`
        input. A drafter that knows the answer but gets every third id wrong
        makes both kept and rolled-back guesses certain."""
        pt2 = load_pt2(os.environ["TINY_SLOTS"])
        prompt = self.prompts[1][:20]
        want = list(decode(Slot(pt2), prompt, argmax, 40))

        def oracle(history, k):
            at = len(history) - len(prompt)
            guess = want[at : at + k]
            return [t if (at + i) % 3 else (t + 1) % tiny_model.VOCAB for i, t in enumerate(guess)]

        stats = Stats()
        got = list(decode(Slot(pt2, draft=oracle, draft_k=4), prompt, argmax, 40, (), stats))
        self.assertEqual(got, want)
        self.assertGreater(stats.num_accepted_tokens, 0)
        self.assertGreater(stats.num_draft_tokens, stats.num_accepted_tokens)


if __name__ == "__main__":
    unittest.main()
