"""A vision checkpoint exported with its decoder quantized (`--quantize q4`:
4-bit linears, 8-bit token embeddings; the vision tower stays fp32, as
export/README.md says) gives, with images, the greedy ids eager gives
running the same quantized model: the .pte in et_run and the .pt2 in
aoti_run. The tiny random SmolVLM (testing.tiny_smolvlm), one export of
each; the fp32 cases are //export:vision_smolvlm_test's.
"""

import json
import os
import tempfile
import unittest
from pathlib import Path

from PIL import Image

from export import export_llm
from export import vision_cases as vc
from testing.tiny_smolvlm import write_smolvlm

MAX_SEQ = 256
# What --quantize q4 does to a float checkpoint, in torchchat.quantize's terms.
EAGER_SPEC = {"linear:int4": {"groupsize": 32}, "embedding": {"groupsize": 32}}


class VisionQuantized(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.ckpt = write_smolvlm(cls.tmp / "ckpt")
        photo = Image.open(vc.CHINA).convert("RGB")
        cls.images = [cls.tmp / "a.ppm"]
        photo.save(cls.images[0])
        out = cls.tmp / "out"
        out.mkdir()
        cls.out = out
        cls.artifacts = {"runner/et/et_run": out / "model.pte"}
        cls.artifacts["runner/aoti/aoti_run"] = out / "model.pt2"
        argv = ["--checkpoint-path", str(cls.ckpt), "--max-seq-length", str(MAX_SEQ), "--quiet"]
        argv += ["--quantize", "q4", "--output-pte-path", str(out / "model.pte")]
        argv += ["--output-aoti-package-path", str(out / "model.pt2")]
        assert export_llm.main(argv) == 0

    def test_runners_match_quantized_eager(self):
        want = vc.eager_ids(self.ckpt, self.images, MAX_SEQ, quantize=EAGER_SPEC)
        fp32 = vc.eager_ids(self.ckpt, self.images, MAX_SEQ)
        self.assertNotEqual(want, fp32)  # the quantization shows in the ids
        self.assertGreater(len(want), 8)
        for runner, artifact in self.artifacts.items():
            with self.subTest(runner=runner):
                ids = self.out / f"ids-{artifact.suffix}.json"
                r = vc.runner_generate(runner, artifact, self.images, "--ids-json", str(ids))
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                got = json.loads(ids.read_text())["generated"]
                self.assertEqual(got, want[: len(got)])
                self.assertGreater(len(got), 8)


if __name__ == "__main__":
    unittest.main()
