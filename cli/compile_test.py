"""The CLI's compiled decode: every --compile mode gives eager's greedy ids,
and the AOTInductor package is built once and then reused."""

import json
import os
import tempfile
import unittest
from pathlib import Path

from testing import gguf_blocks
from testing.cli_harness import run

RUNFILES = Path(os.environ.get("TEST_SRCDIR", "."), "_main")
TINY = RUNFILES / "testing" / "tiny" / "ckpt" / "consolidated.00.pth"


class CompileTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.cache = self.dir / "compiled"
        os.environ["TORCHCHAT_COMPILE_CACHE"] = str(self.cache)

    def tearDown(self):
        del os.environ["TORCHCHAT_COMPILE_CACHE"]
        self.tmp.cleanup()

    def generate(self, *flags, max_seq="96", source=("--checkpoint-path", str(TINY))):
        stats = self.dir / "stats.json"
        argv = [
            "generate",
            *source,
            "--prompt",
            "Once upon a time",
            "--temperature",
            "0",
            "--max-new-tokens",
            "40",
            "--max-seq-length",
            max_seq,
            "--stats-json",
            str(stats),
            *flags,
        ]
        rc, out, err = run(argv)
        self.assertEqual(rc, 0, err)
        return out, err, json.loads(stats.read_text())

    def test_every_mode_gives_eager_ids(self):
        eager, _, _ = self.generate("--compile", "none")
        dynamo, _, _ = self.generate("--compile")
        first, err1, stats1 = self.generate()
        second, err2, stats2 = self.generate()
        self.assertEqual(dynamo, eager)
        self.assertEqual(first, eager)
        self.assertEqual(second, eager)
        # Compiled once, then loaded from the cache.
        self.assertIn("compiling", err1)
        self.assertNotIn("compiling", err2)
        self.assertEqual(len(list(self.cache.glob("*.pt2"))), 1)
        self.assertEqual(stats1["model"]["compiled"], stats2["model"]["compiled"])
        self.assertEqual(stats2["answers"][0]["num_generated_tokens"], 40)

    def test_a_gguf_compiles_to_code_only(self):
        # A GGUF in its own formats: the package holds no weights, each start
        # hands it the file's tensors in place, and the ids stay eager's.
        gguf = gguf_blocks.write_model(
            self.dir / "m.gguf", {"*": "Q4_K", "token_embd.weight": "Q6_K"}, vocab=320, tie=True
        )
        source = ("--gguf-path", str(gguf), "--tokenizer-path", str(TINY.parent / "tokenizer.json"))
        eager, _, _ = self.generate("--compile", "none", source=source)
        first, err1, stats1 = self.generate(source=source)
        second, err2, stats2 = self.generate(source=source)
        self.assertIn("compiling", err1)
        self.assertNotIn("compiling", err2)
        self.assertEqual((first, second), (eager, eager))
        self.assertEqual(
            stats2["model"]["quantize"], {"gguf Q4_K": 14, "gguf Q6_K": 1, "gguf embedding Q6_K": 1}
        )
        # No weight is in the package: a run of a tensor's bytes (stored
        # uncompressed, as a package would hold it) appears nowhere in it.
        from torchchat.checkpoint import load_checkpoint

        (pt2,) = self.cache.glob("*.pt2")
        blocks = load_checkpoint(gguf).gguf["layers.1.feed_forward.w1.weight"].blocks
        self.assertFalse(blocks[5, :96].tobytes() in pt2.read_bytes(), "weights in the package")
        self.assertEqual(len(list(self.cache.glob("*.constants.pt"))), 1)

    def test_a_broken_entry_is_rebuilt(self):
        self.generate(max_seq="64")
        (pt2,) = self.cache.glob("*.pt2")
        pt2.write_bytes(b"truncated")
        out, err, _ = self.generate(max_seq="64")
        self.assertIn("compiling again", err)
        self.assertGreater(pt2.stat().st_size, 1000)
        eager, _, _ = self.generate("--compile", "none", max_seq="64")
        self.assertEqual(out, eager)

    def test_the_key_follows_settings_and_files(self):
        from torchchat import compile_cache

        settings = {"quantize": {}, "dtype": None, "max_seq_length": 64}
        k = compile_cache.key(TINY, settings)
        self.assertEqual(k, compile_cache.key(TINY, dict(settings)))
        self.assertNotEqual(k, compile_cache.key(TINY, dict(settings, max_seq_length=80)))
        # A changed file beside a Meta checkpoint (its params.json) is a new model.
        copy = self.dir / "ckpt"
        copy.mkdir()
        for f in TINY.parent.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        moved = compile_cache.key(copy / TINY.name, settings)
        (copy / "params.json").write_text((copy / "params.json").read_text() + "\n")
        self.assertNotEqual(moved, compile_cache.key(copy / TINY.name, settings))


if __name__ == "__main__":
    unittest.main()
