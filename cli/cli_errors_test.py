"""CLI errors: one clear line and exit 1; registry commands offline."""

import os
import time
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from testing.cli_harness import CliTestCase, run


class CliErrorsTest(CliTestCase):
    def test_unknown_alias_suggests_close_matches(self):
        self.assert_one_line_error(
            ["generate", "smollm2-135m-instrct"], "did you mean.*smollm2-135m-instruct"
        )

    def test_corrupt_and_missing_checkpoints(self):
        bad = self.dir / "bad.gguf"
        bad.write_bytes(b"not a gguf file at all")
        self.assert_one_line_error(["generate", "--gguf-path", str(bad)], "GGUF")
        self.assert_one_line_error(
            ["generate", "--checkpoint-path", str(self.dir / "nope")], "not found"
        )

    def test_prompt_longer_than_context(self):
        self.assert_one_line_error(
            ["generate", "--max-seq-length", "16", "--prompt", "word " * 40], "context holds 16"
        )

    def test_bad_quantize(self):
        self.assert_one_line_error(
            ["generate", "--quantize", '{"linear:int2": {}}'], "unknown scheme"
        )

    def test_registry_commands(self):
        rc, out, _ = run(["where", "smollm2"])
        self.assertEqual(rc, 0)
        self.assertTrue(Path(out.strip()).is_file())
        rc, out, _ = run(["list"])
        self.assertIn("llama3.2-1b", out)
        os.environ["TORCHCHAT_MODEL_DIR"] = str(self.dir)
        try:
            t0 = time.monotonic()
            self.assert_one_line_error(["download", "llama3.2-1b"], "offline")
            self.assertLess(time.monotonic() - t0, 10)
            rc, out, _ = run(["remove", "llama3.2-1b"])
            self.assertEqual(
                (rc, out.strip()), (0, "meta-llama/Llama-3.2-1B-Instruct is not downloaded")
            )
        finally:
            del os.environ["TORCHCHAT_MODEL_DIR"]


if __name__ == "__main__":
    unittest.main()
