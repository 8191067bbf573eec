"""Speculative decoding with prompt lookup and with a draft model: the same
ids as plain decoding, greedy and seeded sampling, on the tiny random model
(eager) and on its compiled package with slots (the server's), through
rollbacks, a full context and a continued conversation; sampling keeps the
target's distribution (chi-square on a known Markov chain); the drafters;
and the built-in GGUF at its default int8 activations, greedy."""

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
from torchchat.speculate import AdaptiveK, DraftModel, PromptLookup

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


class BuiltinGGUFTest(unittest.TestCase):
    """The built-in Q4_1 GGUF in its own kernels, at their default int8
    activations: a forward of several ids must give each id the bits of a
    forward of that id alone, or rounding x to 8 bits turns 1-ulp sums into
    other ids (kernels/README.md)."""

    def test_greedy_is_plain_decoding(self):
        from kernels.ggml import ops
        from torchchat import registry
        from torchchat.checkpoint import load_native

        self.assertEqual(ops.decode_x(), "int8")
        path = registry.model_path(registry.resolve(registry.DEFAULT_MODEL))
        model = attend_filled_cache(load_native(load_checkpoint(path), 256)[0])
        g = torch.Generator().manual_seed(0)
        words = torch.randint(2, model.config.vocab_size, (16,), generator=g).tolist()
        prompt = words * 3 + torch.randint(2, model.config.vocab_size, (8,), generator=g).tolist()
        want = list(decode(Slot(model), prompt, argmax, 48))
        for k in (3, 8):
            with self.subTest(k=k):
                stats = Stats()
                got = list(decode(with_drafts(model, k), prompt, argmax, 48, (), stats))
                self.assertEqual(got, want)
                self.assertGreater(stats.num_accepted_tokens, 0)
                self.assertGreater(stats.num_draft_tokens, stats.num_accepted_tokens)


class AdaptiveKTest(unittest.TestCase):
    def test_rule(self):
        a = AdaptiveK(1, 10)
        self.assertEqual(a(7, 7, 7), 9)  # a full draft kept whole: two more
        self.assertEqual(a(9, 9, 9), 10)  # up to hi
        self.assertEqual(a(7, 3, 3), 7)  # a short draft kept whole: k was not the limit
        self.assertEqual(a(7, 7, 3), 6)  # fewer than half kept: one fewer
        self.assertEqual(a(7, 7, 4), 7)  # half or more: as it was
        self.assertEqual(a(1, 1, 0), 1)  # down to lo
        with self.assertRaises(ValueError):
            AdaptiveK(0, 4)

    def test_decode_moves_k_and_keeps_plain_ids(self):
        """On the tiny model, a drafter that knows the answer makes every
        draft whole, so k grows to its bound; one that is always wrong
        shrinks k to 1. The ids are plain decoding's either way."""
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        ckpt = tiny_model.write_checkpoint(os.path.join(tmp, "tiny"))
        model = attend_filled_cache(load_model(load_checkpoint(ckpt), torch.float32, 256))
        prompt = list(range(3, 23))
        want = list(decode(Slot(model), prompt, argmax, 80))
        for wrong, ks_want in (
            (False, [4, 6, 8, 8, 8]),
            (True, [4, 3, 2, 1, 1]),
        ):
            asked = []

            def drafter(history, k, wrong=wrong, asked=asked):
                asked.append(k)
                at = len(history) - len(prompt)
                guess = want[at : at + k]
                return [(t + 1) % tiny_model.VOCAB for t in guess] if wrong else guess

            slot = Slot(model, draft=drafter, draft_k=4, adapt_k=AdaptiveK(1, 8))
            with self.subTest(wrong=wrong):
                self.assertEqual(list(decode(slot, prompt, argmax, 80)), want)
                self.assertEqual(asked[:5], ks_want)


class DraftModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))

        def tiny(seed):
            d = tiny_model.write_checkpoint(os.path.join(tmp, f"tiny{seed}"), seed=seed)
            return attend_filled_cache(load_model(load_checkpoint(d), torch.float32, 256))

        # Each model its own cache: the target, itself again, another one.
        cls.target, cls.same, cls.other = tiny(0), tiny(0), tiny(1)
        g = torch.Generator().manual_seed(5)
        cls.prompt = torch.randint(3, tiny_model.VOCAB, (24,), generator=g).tolist()

    def decode(self, drafter, pick, steps=80):
        stats = Stats()
        slot = Slot(self.target, draft=drafter, draft_k=5 if drafter else 0)
        return list(decode(slot, self.prompt, pick, steps, (), stats)), stats

    def test_same_ids_as_plain_decoding(self):
        want, _ = self.decode(None, argmax)
        got, stats = self.decode(DraftModel(self.same, tiny_model.VOCAB), argmax)
        self.assertEqual(got, want)
        # The model drafting for itself: every guess is kept.
        self.assertEqual(stats.num_accepted_tokens, stats.num_draft_tokens)
        got, stats = self.decode(DraftModel(self.other, tiny_model.VOCAB), argmax)
        self.assertEqual(got, want)
        self.assertLess(stats.num_accepted_tokens, stats.num_draft_tokens)
        for seed in (1, 2):

            def sampler():
                return Sampler(0.9, 50, 0.95, 0.0, 1.0, seed)

            want, _ = self.decode(None, sampler())
            got, stats = self.decode(DraftModel(self.other, tiny_model.VOCAB), sampler())
            self.assertEqual(got, want)
            self.assertGreater(stats.num_draft_tokens, 0)


class MarkovModel:
    """Logits that depend on the previous id only: a chain whose marginals
    are known exactly."""

    max_seq_length = 64

    def __init__(self, logits):
        self.logits = logits  # [V, V]: row = previous id

    def __call__(self, tokens, input_pos):
        return self.logits[tokens[0, -1:]]

    def forward_all(self, tokens, input_pos):
        return self.logits[tokens[0]]


class SamplingDistributionTest(unittest.TestCase):
    def test_rejection_keeps_the_target_distribution(self):
        from scipy.stats import chisquare

        g = torch.Generator().manual_seed(0)
        v, steps, n = 4, 4, 3000
        chain = torch.randn(v, v, generator=g) * 1.5
        p = torch.softmax(chain.double(), dim=-1)
        # A drafter that guesses one fixed id, right some of the time.
        model = MarkovModel(chain)
        counts = torch.zeros(steps, v)
        for seed in range(n):
            slot = Slot(model, draft=lambda h, k: [2] * k, draft_k=3)
            out = list(decode(slot, [0], Sampler(1.0, 0, 1.0, 0.0, 1.0, seed), steps))
            for i, t in enumerate(out):
                counts[i, t] += 1
        marginal = p[0]
        for i in range(steps):
            with self.subTest(position=i):
                expected = (marginal / marginal.sum() * n).numpy()
                self.assertGreater(chisquare(counts[i].double().numpy(), expected).pvalue, 1e-3)
            marginal = marginal @ p


if __name__ == "__main__":
    unittest.main()
