"""Perplexity: the window rules, and the tiny model's perplexity against a
direct float64 computation (every window a plain causal forward)."""

import math
import tempfile
import unittest
from pathlib import Path

import torch

from evals import perplexity
from evals.scoring import PackedScorer
from testing import tiny_model
from torchchat import checkpoint, tokenizer

TEXT = " ".join(tiny_model.TEXT[:7]) * 3


class WindowsTest(unittest.TestCase):
    def test_lm_eval_rule_scores_every_token_once(self):
        for n, window, stride in [(100, 16, 8), (100, 16, 15), (37, 10, 3), (17, 16, 1)]:
            plan = perplexity.windows(n, window, stride, "lm-eval")
            scored = [i for w in plan for i in range(w.score_from, w.end)]
            self.assertEqual(scored, list(range(1, n)), (n, window, stride))
            for w in plan:
                self.assertLessEqual(w.end - w.start, window)
                # after the first window, each token has window - stride of context
                if w.start:
                    self.assertGreaterEqual(w.score_from - w.start, window - stride)

    def test_llama_cpp_rule(self):
        # llama-perplexity without a stride: n // ctx chunks, second half scored
        # but its first token: ctx - ctx/2 - 1 tokens each.
        plan = perplexity.windows(1000, 128, 0, "llama.cpp")
        self.assertEqual(len(plan), 1000 // 128)
        self.assertTrue(all(w.end - w.score_from == 128 - 64 - 1 for w in plan))
        self.assertEqual(plan[1].start, 128)
        # --ppl-stride 32: windows every 32, each scoring its last 32.
        plan = perplexity.windows(1000, 128, 32, "llama.cpp")
        self.assertEqual(len(plan), (1000 - 128 + 31) // 32)
        self.assertTrue(all(w.end - w.score_from == 32 for w in plan))

    def test_short_text_is_refused(self):
        with self.assertRaisesRegex(perplexity.PerplexityError, "shorter than one window of 64"):
            perplexity.windows(50, 64, 32, "lm-eval")
        with self.assertRaisesRegex(perplexity.PerplexityError, "at least 2 windows"):
            perplexity.windows(100, 64, 0, "llama.cpp")
        with self.assertRaisesRegex(perplexity.PerplexityError, "between 1 and window - 1"):
            perplexity.windows(1000, 64, 64, "lm-eval")


def direct_logprobs(model, tokens, plan, bos_id=None):
    """float64, one window per forward through the model's own cache path."""
    out = []
    with torch.no_grad():
        for w in plan:
            ids = list(tokens[w.start : w.end])
            if bos_id is not None:
                ids[0] = bos_id
            logits = model(torch.tensor([ids]), torch.arange(len(ids)))[0]
            lp = torch.log_softmax(logits.double(), dim=-1)
            for i in range(w.score_from - w.start, len(ids)):
                out.append(float(lp[i - 1, ids[i]]))
    return out


class PerplexityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = tiny_model.write_checkpoint(Path(cls.tmp.name) / "ckpt")
        ckpt = checkpoint.load_checkpoint(d)
        cls.tok = tokenizer.load(
            d / "tokenizer.json", bos_id=ckpt.bos_id, eos_ids=ckpt.eos_ids, add_bos=ckpt.add_bos
        )
        cls.scorer = PackedScorer(checkpoint.load_model(ckpt, torch.float32, 128), batch_tokens=100)
        cls.f64 = checkpoint.load_model(ckpt, torch.float64, 128, full_logits=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, window, stride, rule):
        r = perplexity.evaluate(self.scorer, self.tok, TEXT, window, stride, rule)
        bos = self.tok.bos_id if self.tok.add_bos else None
        tokens = ([bos] if bos is not None else []) + self.tok.encode(TEXT, bos=False)
        plan = perplexity.windows(len(tokens), window, stride, rule)
        want = direct_logprobs(
            self.f64, tokens, plan, bos if rule == "llama.cpp" and not stride else None
        )
        self.assertEqual(r.tokens, len(want))
        ppl = math.exp(-math.fsum(want) / len(want))
        self.assertAlmostEqual(r.perplexity / ppl, 1.0, delta=1e-5)
        # bits per byte: the same total over the scored text's bytes
        self.assertAlmostEqual(
            r.bits_per_byte, -math.fsum(want) / math.log(2) / r.bytes, delta=1e-5
        )
        return r

    def test_lm_eval_rule_equals_float64(self):
        r = self.check(48, 16, "lm-eval")
        self.assertGreater(r.windows, 3)  # several windows, packed across forwards

    def test_llama_cpp_rules_equal_float64(self):
        self.check(32, 0, "llama.cpp")
        self.check(32, 8, "llama.cpp")

    def test_limit_keeps_the_first_windows(self):
        r = perplexity.evaluate(self.scorer, self.tok, TEXT, 48, 16, "lm-eval", limit=2)
        self.assertEqual(r.windows, 2)
        self.assertEqual(r.tokens, 47 + 16)


if __name__ == "__main__":
    unittest.main()
