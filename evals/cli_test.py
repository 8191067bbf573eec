"""`torchchat eval` from the command line on the tiny model: every task on
the real data (a few items), and one clear line for each bad input."""

import json
import os
import unittest
from pathlib import Path

from testing.cli_harness import CliTestCase, run

TINY = Path(os.environ["TINY_FULL"]).parent
LAST_ONLY = os.environ["TINY_PTE"]
os.environ["TORCHCHAT_EVAL_DATA"] = str(Path(os.environ["EVAL_DATA"]).parent)
MODEL = ["--checkpoint-path", str(TINY / "ckpt"), "--max-seq-length", "128"]


class EvalCliTest(CliTestCase):
    def assert_one_line_error(self, argv, pattern):
        super().assert_one_line_error(["eval"] + argv, "^torchchat eval: error: " + pattern)

    def test_every_task(self):
        out_json = self.dir / "r.json"
        tasks = "ppl,hellaswag,arc_easy,arc_challenge,piqa,winogrande,mmlu"
        rc, out, err = run(
            ["eval"]
            + MODEL
            + ["--tasks", tasks, "--limit", "2", "--window", "64", "--output-json", str(out_json)]
        )
        self.assertEqual(rc, 0, err)
        r = json.loads(out_json.read_text())
        self.assertEqual(set(r), set(tasks.split(",")))
        self.assertEqual(r["ppl"]["windows"], 2)
        self.assertEqual(Path(r["ppl"]["text"]).name, "lambada_test.txt")
        self.assertGreater(r["ppl"]["perplexity"], 1.0)
        for t in tasks.split(",")[1:]:
            self.assertEqual(r[t]["n"], 2, t)
            self.assertIn(r[t]["acc"], (0.0, 0.5, 1.0), t)
        self.assertRegex(out, r"ppl  lambada_test.txt: perplexity [0-9.]+, bits/byte")
        self.assertRegex(out, r"hellaswag +n=2 +acc [0-9.]+ ± [0-9.]+  acc_norm")

    def test_bad_input(self):
        text = self.dir / "t.txt"
        self.assert_one_line_error(
            MODEL + ["--tasks", "ppl,hellaswagg"],
            "unknown task 'hellaswagg' \\(known: ppl, hellaswag",
        )
        self.assert_one_line_error(
            MODEL + ["--text", str(self.dir / "none.txt")], "--text .*none.txt: no such file"
        )
        text.write_text("  \n")
        self.assert_one_line_error(MODEL + ["--text", str(text)], "--text .*t.txt is empty")
        text.write_text("The quick brown fox jumps over the lazy dog.")
        self.assert_one_line_error(
            MODEL + ["--text", str(text)],
            "t.txt: the text is \\d+ tokens, shorter than one window of 128",
        )
        self.assert_one_line_error(MODEL + ["--limit", "0"], "--limit must be at least 1")
        self.assert_one_line_error(
            ["--pte-path", LAST_ONLY],
            ".*model.pte returns only the last position's logits; re-export it with export_llm --full-logits",
        )


if __name__ == "__main__":
    unittest.main()
