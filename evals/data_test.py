"""Each task reader parses its real files (the pinned wheels, prepared by the
@eval_data repository rule): the count and one known item."""

import json
import os
import unittest
from pathlib import Path

from evals import data

DIR = Path(os.environ["EVAL_DATA"]).parent


def read(task):
    with open(DIR / f"{task}.jsonl") as f:
        return [json.loads(line) for line in f]


class DataTest(unittest.TestCase):
    def test_counts(self):
        for task, (_, _, count) in data.TASKS.items():
            self.assertEqual(len(read(task)), count, task)
        self.assertEqual(
            {
                "hellaswag": 10042,
                "arc_easy": 2376,
                "arc_challenge": 1172,
                "piqa": 1838,
                "winogrande": 1267,
                "mmlu": 14042,
            },
            {t: c for t, (_, _, c) in data.TASKS.items()},
        )

    def test_known_items(self):
        h = read("hellaswag")[0]
        self.assertEqual(h["query"], "Roof shingle removal: A man is sitting on a roof. He")
        self.assertEqual((h["label"], h["choices"][3]), (3, "starts pulling up roofing on a roof."))
        a = read("arc_easy")[0]
        self.assertEqual(
            (a["id"], a["label"], a["choices"][0]),
            ("Mercury_417466", 0, "Sunlight is the source of energy for nearly all ecosystems."),
        )
        self.assertEqual(
            a["question"],
            "Which statement best explains why photosynthesis is the foundation of most food webs?",
        )
        c = read("arc_challenge")[0]
        self.assertEqual((c["id"], c["label"], len(c["choices"])), ("Mercury_7175875", 2, 4))
        p = read("piqa")[0]
        self.assertEqual(
            (p["goal"], p["label"]), ("How do I ready a guinea pig cage for it's new occupants?", 0)
        )
        w = read("winogrande")[0]
        self.assertEqual(
            w,
            {
                "sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                "option1": "Sarah",
                "option2": "Maria",
                "answer": "2",
            },
        )
        m = read("mmlu")
        self.assertEqual(
            (m[0]["subject"], m[0]["answer"], m[0]["choices"][3]),
            ("moral scenarios", 3, "Not wrong, Not wrong"),
        )
        self.assertEqual(len({d["subject"] for d in m}), 57)
        self.assertNotIn("question", {d["question"] for d in m})  # the header rows are gone

    def test_lambada_text(self):
        text = (DIR / data.DEFAULT_TEXT).read_text()
        passages = text.strip().split("\n\n")
        self.assertEqual(len(passages), data.LAMBADA_PASSAGES)
        self.assertTrue(passages[0].startswith("In my palm is a clear stone"))
        self.assertTrue(passages[0].endswith("I don't care about signs"))


if __name__ == "__main__":
    unittest.main()
