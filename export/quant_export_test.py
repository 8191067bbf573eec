"""The command line with --quantize mobile on a tiny model.

The .pte must compute what ExecuTorch's quantization transforms compute in
eager (same schemes, same weights), keep the output projection in fp32, and
be much smaller than the fp32 export would be.
"""

import contextlib
import io
import shutil
import tempfile
import unittest
from pathlib import Path

import torch

from export import export_llm, quality
from export.source import build, load_source
from testing import tiny_model
from torchchat import artifacts

MAX_SEQ = 64


class QuantizedPteTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        cls.ckpt = tiny_model.write_checkpoint(cls.dir / "ckpt", dim=128, hidden=256)
        cls.pte_path = cls.dir / "out" / "model.pte"
        cls.pte_path.parent.mkdir()
        cls.err = io.StringIO()
        with contextlib.redirect_stderr(cls.err):
            cls.rc = export_llm.main(
                [
                    "--checkpoint-path",
                    str(cls.ckpt),
                    "--output-pte-path",
                    str(cls.pte_path),
                    "--quantize",
                    "mobile",
                    "--max-seq-length",
                    str(MAX_SEQ),
                    "--no-et-custom-ops",
                ]
            )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_progress_by_stage_and_size(self):
        self.assertEqual(self.rc, 0, self.err.getvalue())
        log = self.err.getvalue()
        for stage in ("load", "quantize", "export", "lower", "serialize"):
            self.assertRegex(log, rf"\[{stage}\] done in \d+\.\d s")
        self.assertRegex(log, r"wrote .*model\.pte \(\d+\.\d MiB\)")

    def test_matches_executorch_quantized_eager(self):
        source = load_source(self.ckpt)
        eager = quality.et_quantized_eager(build(source, "fp32", MAX_SEQ), "mobile")
        pte = artifacts.load_pte(self.pte_path)
        ids = [5, 70, 100, 200, 33, 12]
        with torch.no_grad():
            want = eager(torch.tensor([ids]), torch.arange(len(ids)))
        got = pte(torch.tensor([ids]), torch.arange(len(ids)))
        # XNNPACK's dynamic int8 activations round slightly differently.
        torch.testing.assert_close(got, want, atol=0.05 * float(want.abs().max()), rtol=0)
        self.assertEqual(int(got.argmax()), int(want.argmax()))

    def test_quantized_ops_and_fp32_output(self):
        from torchchat.executorch_compat import deserialize_pte_binary

        program = deserialize_pte_binary(self.pte_path.read_bytes())
        program = getattr(program, "program", program)
        ops = {op.name for plan in program.execution_plan for op in plan.operators}
        self.assertIn("quantized_decomposed::embedding_4bit", ops)
        # --no-et-custom-ops: only core, portable, quantized and XNNPACK.
        self.assertFalse([o for o in ops if o.startswith("llama::")], ops)
        # fp32 would be ~(320*128*2 + 2 layers of linears) * 4 bytes; the
        # quantized layers and 4-bit embedding must shrink it well below.
        fp32_bytes = 4 * (2 * 320 * 128 + 2 * (4 * 128 * 128 + 3 * 128 * 256))
        self.assertLess(self.pte_path.stat().st_size, 0.75 * fp32_bytes)
        self.assertGreater(self.pte_path.stat().st_size, 4 * 320 * 128)  # fp32 output stays


if __name__ == "__main__":
    unittest.main()
