"""Each architecture beyond plain Llama exports both ways and runs the same.

A tiny random Qwen3 (per-head q/k norms), SmolLM3 (a NoPE layer),
Phi-4-mini-like phi3 (partial rotary, LongRoPE), Gemma 2 and Gemma 3 (sliding
windows shorter than the test, soft-caps, local RoPE), OLMo 2 (post norms
only, q/k norms over all heads), from
testing.tiny_archs, each with a real tokenizer, are exported by export_llm's
command line to a .pte and a .pt2 at once; et_run and aoti_run must give
eager's greedy ids.
"""

import os
import tempfile
import unittest
from pathlib import Path

import torch

from export import export_llm
from export.source import build, load_source
from testing import tiny_archs, tiny_model
from testing.runners import run_ids, runfile
from torchchat import tokenizer as tc_tokenizer
from torchchat.generate import greedy

MAX_SEQ = 64
STEPS = 24
PROMPT = "Hello, my name is"


class ExportArchitectures(unittest.TestCase):
    def test_qwen3(self):
        self.check("qwen3", lambda c: self.assertTrue(c.qk_norm))

    def test_smollm3(self):
        self.check("smollm3", lambda c: self.assertEqual(c.no_rope_layers, (3,)))

    def test_phi4(self):
        # Partial rotary and LongRoPE live in the RoPE tables: the .pte and
        # .pt2 carry them as built.
        self.check("phi4", lambda c: self.assertEqual((c.rotary_dim, bool(c.longrope)), (12, True)))

    def test_gemma2(self):
        # Windows shorter than prompt + generation, both soft-caps (the
        # score cap keeps those layers aten in the .pte), GeGLU, post norms.
        self.check(
            "gemma2", lambda c: self.assertEqual((c.window_layers, c.attn_softcap), ((0, 2), 0.1))
        )

    def test_gemma3(self):
        # Five windowed layers (llama::custom_sdpa with the window as a mask
        # in the .pte) with their own RoPE base; q/k norms with (1 + w).
        self.check("gemma3", lambda c: self.assertEqual(c.local_rope_theta, 1e4))

    def test_olmo2(self):
        # Post norms only, and q/k norms over all heads (not per head).
        self.check(
            "olmo2", lambda c: self.assertEqual((c.pre_norms, c.qk_norm_heads), (False, True))
        )

    def check(self, arch, check_config):
        tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        hf = tmp / "hf"
        tiny_archs.hf_model(arch).save_pretrained(hf)
        tiny_model.write_tokenizer(hf)
        out = tmp / "out"
        out.mkdir()
        pte, pt2 = out / "model.pte", out / "model.pt2"
        rc = export_llm.main(
            [
                "--checkpoint-path",
                str(hf),
                "--output-pte-path",
                str(pte),
                "--output-aoti-package-path",
                str(pt2),
                "--max-seq-length",
                str(MAX_SEQ),
                "--dtype",
                "fp32",
                "--quiet",
            ]
        )
        self.assertEqual(rc, 0)
        source = load_source(hf, None)
        check_config(source.ckpt.config)
        eager = build(source, "fp32", MAX_SEQ)
        tok = tc_tokenizer.load(out / "tokenizer.json")
        prompt = tok.encode(PROMPT, bos=tok.add_bos)
        with torch.no_grad():
            want = greedy(eager, prompt, STEPS)
        for runner, artifact in (("runner/et/et_run", pte), ("runner/aoti/aoti_run", pt2)):
            with self.subTest(runner):
                r, got = run_ids(runfile(runner), artifact, "-i", PROMPT, "-n", str(STEPS))
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                assert got is not None
                self.assertEqual(got, want[: len(got)])
                self.assertGreater(len(got), 4)


if __name__ == "__main__":
    unittest.main()
