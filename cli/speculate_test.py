"""generate and chat with --speculate and --draft on the tiny model: the same
text as without, the acceptance on the stats line, and one-line errors."""

import os
import shutil
import unittest

os.environ["HF_HUB_OFFLINE"] = "1"

from testing import tiny_model
from testing.cli_harness import CliTestCase, run

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


class SpeculateCliTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.ckpt = str(tiny_model.write_checkpoint(self.dir / "tiny"))
        self.base = ["--checkpoint-path", self.ckpt, "--compile", "none", "--temperature", "0"]

    def generate(self, *extra):
        rc, out, err = run(
            ["generate", *self.base, "--prompt", PROMPT, "--max-new-tokens", "60", *extra]
        )
        self.assertEqual(rc, 0, err)
        return out, err

    def test_same_text_and_acceptance_line(self):
        want, err = self.generate()
        self.assertNotIn("draft accepted", err)
        got, err = self.generate("--speculate", "prompt-lookup", "--draft-k", "4")
        self.assertEqual(got, want)
        self.assertRegex(err, r"draft accepted \d+/\d+ \(\d+%\)")
        other = str(tiny_model.write_checkpoint(self.dir / "other", seed=1))
        got, err = self.generate("--draft", other)
        self.assertEqual(got, want)
        self.assertIn("draft accepted", err)
        # Seeded sampling too.
        sampled = ["--temperature", "0.8", "--seed", "7"]
        self.assertEqual(
            self.generate(*sampled, "--speculate", "prompt-lookup")[0], self.generate(*sampled)[0]
        )

    def test_chat_turns(self):
        turns = "Hello, my name is Tiny.\nThe quick brown fox jumps over the lazy dog.\n"
        argv = ["chat", *self.base, "--max-new-tokens", "30"]
        rc, want, err = run(argv, turns)
        self.assertEqual(rc, 0, err)
        rc, got, err = run([*argv, "--speculate", "prompt-lookup"], turns)
        self.assertEqual((rc, got), (0, want), err)

    def test_errors(self):
        gen = ["generate", *self.base, "--prompt", "Hi"]
        self.assert_one_line_error(
            [*gen, "--speculate", "draft"], "--speculate draft needs --draft"
        )
        self.assert_one_line_error(
            [*gen, "--speculate", "prompt-lookup", "--draft", self.ckpt], "--draft drafts for"
        )
        self.assert_one_line_error(
            [*gen, "--speculate", "prompt-lookup", "--draft-k", "0"], "at least 1"
        )
        # A draft model whose tokenizer gives other ids.
        other = self.dir / "other-tokenizer"
        shutil.copytree(self.ckpt, other)
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(["zebra zone " * 50], trainers.BpeTrainer(vocab_size=300))
        tok.save(str(other / "tokenizer.json"))
        self.assert_one_line_error([*gen, "--draft", str(other)], "tokenizer differs")


if __name__ == "__main__":
    unittest.main()
