"""acc and acc_norm through our task YAMLs and lm-eval, on hand-made items
whose log-likelihoods are given: what each task asks the model, and what
it makes of the answers."""

import json
import tempfile
import unittest
from pathlib import Path

from evals import harness


def fake_lm(lls):
    """An lm-eval LM that answers (context, continuation) from a table, and
    records what it was asked."""
    harness._quiet_lm_eval()
    from lm_eval.api.model import LM

    class Fake(LM):
        asked = []

        def loglikelihood(self, requests, disable_tqdm=False):
            self.asked += [r.args for r in requests]
            return [(lls[r.args], False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise AssertionError("not used")

        def generate_until(self, requests, disable_tqdm=False):
            raise AssertionError("not used")

    return Fake()


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def run_task(self, name, docs, lls):
        with open(self.dir / f"{name}.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        lm = fake_lm(lls)
        results = harness.run_tasks(lm, [name], self.dir)
        return results[name], lm.asked

    def test_hellaswag_acc_and_acc_norm(self):
        # acc takes the highest log-likelihood; acc_norm divides it by the
        # choice's length in characters first (lm-eval's definition).
        docs = [
            {"query": "Q1:", "choices": ["ab", "abcdefgh"], "label": 1},  # -2/2 < -4/8
            {"query": "Q2:", "choices": ["abcd", "a"], "label": 0},  # both pick 1
            {"query": "Q3:", "choices": ["abc", "abc!"], "label": 0},
        ]
        lls = {
            ("Q1:", " ab"): -2.0,
            ("Q1:", " abcdefgh"): -4.0,
            ("Q2:", " abcd"): -4.0,
            ("Q2:", " a"): -0.5,
            ("Q3:", " abc"): -1.0,
            ("Q3:", " abc!"): -3.0,
        }
        r, asked = self.run_task("hellaswag", docs, lls)
        self.assertEqual(sorted(asked), sorted(lls))
        self.assertEqual(r["n"], 3)
        # acc: Q1 picks 0 (wrong), Q2 picks 1 (wrong), Q3 picks 0 (right)
        self.assertAlmostEqual(r["acc"], 1 / 3)
        # acc_norm: Q1 -1 vs -0.5 -> 1 (right), Q2 -1 vs -0.5 -> 1 (wrong), Q3 -1/3 vs -3/4 -> 0
        self.assertAlmostEqual(r["acc_norm"], 2 / 3)

    def test_winogrande_scores_the_rest_after_each_option(self):
        docs = [
            {
                "sentence": "The cup fell off the table because _ was tilted.",
                "option1": "the cup",
                "option2": "the table",
                "answer": "2",
            }
        ]
        lls = {
            ("The cup fell off the table because the cup", " was tilted."): -5.0,
            ("The cup fell off the table because the table", " was tilted."): -3.0,
        }
        r, asked = self.run_task("winogrande", docs, lls)
        self.assertEqual(sorted(asked), sorted(lls))
        self.assertEqual(r["acc"], 1.0)

    def test_prompts_of_arc_piqa_mmlu(self):
        arc = [{"id": "x", "question": "Why?", "choices": ["yes", "no"], "label": 1}]
        r, asked = self.run_task(
            "arc_easy",
            arc,
            {("Question: Why?\nAnswer:", " yes"): -1.0, ("Question: Why?\nAnswer:", " no"): -2.0},
        )
        self.assertEqual((r["acc"], r["acc_norm"]), (0.0, 0.0))
        piqa = [{"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 0}]
        r, _ = self.run_task(
            "piqa",
            piqa,
            {
                ("Question: Open a jar\nAnswer:", " twist"): -1.0,
                ("Question: Open a jar\nAnswer:", " pull"): -2.0,
            },
        )
        self.assertEqual(r["acc"], 1.0)
        mmlu = [
            {
                "question": " 2+2? ",
                "subject": "elementary mathematics",
                "choices": ["3", "4", "5", "6"],
                "answer": 1,
            }
        ]
        ctx = (
            "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
            "2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
        )
        r, asked = self.run_task(
            "mmlu", mmlu, {(ctx, " " + c): -float(i != 1) for i, c in enumerate("ABCD")}
        )
        self.assertEqual(r["acc"], 1.0)


if __name__ == "__main__":
    unittest.main()
