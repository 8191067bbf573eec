"""Eager, .pt2, .pte and eager one token at a time score alike: the tiny model exported with
--full-logits, against the eager model's packed scoring and a plain
one-request-at-a-time computation. An artifact without full logits is
refused with the flag that fixes it."""

import math
import os
import unittest
from pathlib import Path

import torch

from evals import harness, perplexity
from evals.scoring import CachedScorer, Group, PackedScorer, one_token_at_a_time
from testing import tiny_model
from torchchat import artifacts, checkpoint, tokenizer

FULL = Path(os.environ["TINY_FULL"]).parent
LAST_ONLY = Path(os.environ["TINY_PTE"])
TEXT = " ".join(tiny_model.TEXT[:7]) * 2
PAIRS = [  # (task, doc, context, continuation): choices share their context
    ("t", 0, "The quick brown fox", " jumps over the lazy dog."),
    ("t", 0, "The quick brown fox", " judges my vow."),
    ("t", 0, "The quick brown fox", " runs"),
    ("t", 1, "Hello, my name is ", "Tiny."),
    ("t", 1, "Hello, my name is ", "Sphinx of black quartz"),
    ("w", 2, "Pack my box with five dozen", " liquor jugs!"),  # winogrande-like:
    ("w", 2, "Pack my box with five", " liquor jugs!"),  # contexts differ
    ("t", 3, "", "Greedy decoding"),  # empty context: lm-eval's prefix token
]


def direct(model, ids, n_scored):
    """Sum of log-probabilities of the last n_scored ids, one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1))[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return math.fsum(float(lp[i - 1, ids[i]]) for i in range(len(ids) - n_scored, len(ids)))


class EquivalenceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ckpt = checkpoint.load_checkpoint(FULL / "ckpt")
        cls.tok = tokenizer.load(
            FULL / "tokenizer.json", bos_id=ckpt.bos_id, eos_ids=ckpt.eos_ids, add_bos=ckpt.add_bos
        )
        cls.eager_full = checkpoint.load_model(ckpt, torch.float32, 64, full_logits=True)
        pte, pt2 = artifacts.load_pte(FULL / "model.pte"), artifacts.load_pt2(FULL / "model.pt2")
        cls.scorers = {
            "eager": PackedScorer(checkpoint.load_model(ckpt, torch.float32, 64), batch_tokens=40),
            "pte": CachedScorer(pte.forward_all, pte.max_seq_length),
            "pt2": CachedScorer(pt2.forward_all, pt2.max_seq_length),
            "decode": CachedScorer(
                one_token_at_a_time(checkpoint.load_model(ckpt, torch.float32, 64)), 64
            ),
        }

    def test_group_scores_agree(self):
        ids = self.tok.encode(TEXT, bos=False)
        groups = [
            Group(ids[:5], [ids[5:9], ids[5:6], [ids[20], ids[3]]]),
            Group(ids[:1], [ids[1:30]]),
            Group(ids[10:40], [ids[40:45], ids[45:47]]),
        ]
        ref = None
        for name, scorer in self.scorers.items():
            got = [[s.logprobs for s in g] for g in scorer.score(groups)]
            flat = [x for g in got for b in g for x in b]
            if ref is None:
                ref = flat
                # the eager one against a plain forward of each branch
                for g, g_scores in zip(groups, got):
                    for b, lps in zip(g.branches, g_scores):
                        want = direct(self.eager_full, g.prefix + b, len(b))
                        self.assertAlmostEqual(math.fsum(lps), want, delta=1e-4)
            else:
                self.assertEqual(len(flat), len(ref))
                for a, b in zip(flat, ref):
                    self.assertAlmostEqual(a, b, delta=1e-4, msg=name)

    def test_loglikelihood_requests_agree(self):
        from lm_eval.api.instance import Instance

        reqs = [
            Instance("loglikelihood", {}, (c, x), i, (t, d, 1))
            for i, (t, d, c, x) in enumerate(PAIRS)
        ]
        lm = harness.make_lm(self.scorers["eager"], self.tok)
        results = {
            name: harness.make_lm(s, self.tok).loglikelihood(reqs)
            for name, s in self.scorers.items()
        }
        for (task, doc, ctx, cont), (ll, _) in zip(PAIRS, results["eager"]):
            # lm-eval's HFLM tokenization of the pair, scored with no grouping
            c, x = lm._encode_pair(ctx, cont)
            self.assertEqual(
                c + x, ([lm.prefix_token] if not ctx else lm.bos) + self.tok.encode(ctx + cont)
            )
            self.assertAlmostEqual(ll, direct(self.eager_full, c + x, len(x)), delta=1e-4)
        for name in ("pte", "pt2"):
            for (a, _), (b, _) in zip(results[name], results["eager"]):
                self.assertAlmostEqual(a, b, delta=1e-4, msg=name)

    def test_perplexity_agrees(self):
        ppl = {
            name: perplexity.evaluate(s, self.tok, TEXT, 40, 20, "lm-eval").perplexity
            for name, s in self.scorers.items()
        }
        self.assertAlmostEqual(ppl["pte"] / ppl["eager"], 1.0, delta=1e-5)
        self.assertAlmostEqual(ppl["pt2"] / ppl["eager"], 1.0, delta=1e-5)

    def test_artifact_without_full_logits_is_refused(self):
        model = artifacts.load_pte(LAST_ONLY)
        with self.assertRaisesRegex(
            artifacts.ArtifactError, "re-export it with export_llm --full-logits"
        ):
            model.forward_all(torch.tensor([[1, 2]]), torch.tensor([0, 1]))


if __name__ == "__main__":
    unittest.main()
