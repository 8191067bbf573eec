"""Speculative decoding on the built-in Q4_1 GGUF compiled as `generate
--speculate` and the server run it (an AOTInductor package with a cache
row), at the GGUF kernels' default int8 activations: a forward of k ids
gives each id the bits of the one-id forward at its position, so greedy
prompt lookup keeps plain decoding's ids, on the bench's summary prompt
too (which parted from token 23 while the package attended with torch's
SDPA). speculate_test's BuiltinGGUFTest is the eager counterpart."""

import os
import tempfile
import unittest

import torch

from kernels.ggml import ops
from torchchat import compile_cache, loading
from torchchat.generate import Slot, Stats, argmax, decode
from torchchat.speculate import PromptLookup
from torchchat.speculate_bench import PROMPTS


class CompiledBuiltinGGUFTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ[compile_cache.CACHE_ENV] = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        options = loading.LoadOptions(compile="aoti", slots=1, max_seq_length=512, quiet=True)
        cls.loaded = loading.load(options)
        cls.model = cls.loaded.ensure_model()

    def test_rows_are_their_one_id_selves(self):
        self.assertEqual(ops.decode_x(), "int8")
        self.assertIn("compiled", self.loaded.info)
        ids = torch.tensor([[1, 504, 2393, 314, 253, 1345, 28, 17, 9012, 30]])
        prompt, rest = ids[:, :2], ids[0, 2:]
        self.model(prompt, torch.arange(2))
        one = [self.model(rest[i : i + 1][None], torch.tensor([2 + i])) for i in range(len(rest))]
        all_rows = self.model.forward_all(rest[None], torch.arange(2, 2 + len(rest)))
        for i, logits in enumerate(one):
            with self.subTest(row=i):
                self.assertTrue(torch.equal(all_rows[i], logits.reshape(-1)))

    def test_prompt_lookup_keeps_plain_ids(self):
        tok = self.loaded.tokenizer
        template = tok.template()
        assert template is not None
        lookup = PromptLookup()

        def wrong_last(history: list[int], k: int) -> list[int]:
            # Lookup's guesses with the last one wrong: the package must
            # also roll back, whatever the model's text happens to copy.
            guess = lookup(history, k)
            return guess[:-1] + [(guess[-1] + 1) % self.model.vocab_size] if guess else guess

        drafted = accepted = 0
        for name, text in PROMPTS.items():
            msgs = [{"role": "user", "content": text}]
            ids = tok.encode(template.render(msgs, add_generation_prompt=True), bos=False)
            want = list(decode(Slot(self.model), ids, argmax, 64))
            for drafter in (lookup, wrong_last):
                stats = Stats()
                slot = Slot(self.model, draft=drafter, draft_k=7)
                got = list(decode(slot, ids, argmax, 64, (), stats))
                with self.subTest(prompt=name, drafter=getattr(drafter, "__name__", "lookup")):
                    self.assertEqual(got, want)
                drafted += stats.num_draft_tokens
                accepted += stats.num_accepted_tokens
        # Both paths ran: guesses kept, and guesses rolled back.
        self.assertGreater(accepted, 0)
        self.assertGreater(drafted, accepted)


if __name__ == "__main__":
    unittest.main()
