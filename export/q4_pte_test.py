"""The exact 4-bit .pte (linear:int4): torchchat's ExecuTorch kernels.

A tiny Llama written as a GGUF the way llama.cpp ships models (Q4_0 and
Q4_1 linears, Q8_0 embedding and output) is exported by export_llm's
command line, `--quantize q4`, to a .pte and a .pt2 at once. Both, eager
with the q4 op and et_run must give the same greedy ids; the ExecuTorch
kernels must give the torch op's numbers bit for bit on every kernel path;
and a runtime without the kernels must say which library it lacks.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from torch import nn

from export import export_llm
from export.source import build, load_source
from kernels import et_ops, q4
from testing import tiny_model
from testing.runners import et_run_greedy_pair
from torchchat import artifacts
from torchchat import quantize as tc_quant
from torchchat.generate import greedy

MAX_SEQ = 64
STEPS = 24
PROMPT_IDS = [0, 57, 112, 200, 31, 7, 150]
ISAS = ("avx512vnni", "avx512", "avx2", "scalar")


class ExactQ4Pte(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        ckpt = tiny_model.write_checkpoint(cls.dir / "ckpt", max_seq_len=256)
        cls.tokenizer = ckpt / "tokenizer.json"
        cls.gguf = tiny_model.write_gguf(ckpt, cls.dir / "tiny.gguf")
        cls.out = cls.dir / "out"
        cls.out.mkdir()
        cls.pte_path, cls.pt2_path = cls.out / "model.pte", cls.out / "model.pt2"
        rc = export_llm.main(
            [
                "--gguf-path",
                str(cls.gguf),
                "--tokenizer-path",
                str(cls.tokenizer),
                "--quantize",
                "q4",
                "--output-pte-path",
                str(cls.pte_path),
                "--output-aoti-package-path",
                str(cls.pt2_path),
                "--max-seq-length",
                str(MAX_SEQ),
                "--quiet",
            ]
        )
        assert rc == 0, "export_llm failed"
        source = load_source(cls.gguf, cls.tokenizer)
        cls.gguf_quantized = source.ckpt.gguf_quantized
        cls.eager = build(source, "fp32", MAX_SEQ)
        cls.counts = tc_quant.quantize_model(
            cls.eager,
            {"linear:int4": {"groupsize": 32}, "embedding": {"groupsize": 32}},
            cls.gguf_quantized,
        )
        with torch.no_grad():
            cls.eager_ids = greedy(cls.eager, PROMPT_IDS, STEPS)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_eager_runs_the_gguf_codes(self):
        self.assertEqual(
            {k: v for k, v in self.counts.items() if v},
            {"int4_exact_from_gguf": 14, "embedding_q8_0": 1, "output_q8_0": 1},
        )

    def test_pte_records_the_kernel_library(self):
        pte = artifacts.load_pte(self.pte_path)
        self.assertEqual(pte.metadata["methods"][et_ops.METADATA_METHOD], et_ops.OPS_VERSION)

    def test_pte_pt2_and_eager_give_the_same_greedy_ids(self):
        pte = artifacts.load_pte(self.pte_path)
        pt2 = artifacts.load_pt2(self.pt2_path)
        self.assertEqual(greedy(pte, PROMPT_IDS, STEPS), self.eager_ids)
        self.assertEqual(greedy(pt2, PROMPT_IDS, STEPS), self.eager_ids)

    def test_pte_logits_match_eager(self):
        # Same kernels, same codes: only the attention and norm arithmetic
        # (XNNPACK and ExecuTorch's sdpa against torch's) may differ. On the
        # exact kernel path: the int16 one rounds x per block, so those
        # float differences can flip a rounding and grow through the layers.
        exact = q4.exact_isa()
        pte = artifacts.load_pte(self.pte_path)
        self.assertTrue(et_ops.force_isa(exact))
        try:
            for ids, start in (
                (PROMPT_IDS, 0),
                ([7], len(PROMPT_IDS)),
                ([42], len(PROMPT_IDS) + 1),
            ):
                tokens = torch.tensor([ids])
                pos = torch.arange(start, start + len(ids))
                with torch.no_grad(), q4.using_isa(exact):
                    want = self.eager(tokens, pos)
                got = pte(tokens, pos)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        finally:
            et_ops.force_isa("")

    def test_et_run_gives_the_same_ids(self):
        got, want = et_run_greedy_pair(
            self.pte_path, self.out / "tokenizer.json", self.eager, "Hello, my name is", STEPS
        )
        self.assertEqual(got, want)

    def test_without_the_kernels_the_error_names_the_library(self):
        script = f"""
import sys
from torchchat import artifacts
try:
    artifacts.load_pte({str(self.pte_path)!r})
except artifacts.ArtifactError as e:
    print(e)
    sys.exit(3)
"""
        env = dict(os.environ, TORCHCHAT_ET_OPS_LIB=str(self.dir / "absent.so"))
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        self.assertEqual(r.returncode, 3, r.stderr[-2000:])
        msg = r.stdout.strip()
        self.assertEqual(len(msg.splitlines()), 1, msg)
        self.assertIn(et_ops.LIB_NAME, msg)
        self.assertIn("torchchat::q4_linear.out", msg)

    def test_executorch_alone_fails_cleanly_naming_the_op(self):
        # ExecuTorch's own runtime, no torchchat code: loading must fail
        # with an exception (not a crash), its log naming the missing op.
        script = f"""
from executorch.runtime import Runtime
program = Runtime.get().load_program({str(self.pte_path)!r})
try:
    program.load_method("forward")
except RuntimeError:
    raise SystemExit(3)
"""
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        self.assertEqual(r.returncode, 3, r.stderr[-2000:])
        self.assertIn("torchchat::q4_linear.out", r.stderr)


class _Linears(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _program(layer: nn.Module, k: int, path: Path) -> None:
    """A .pte of one q4/q8 linear over x [M, k], M dynamic (no delegate)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    m = torch.export.Dim("m", min=1, max=16)
    ep = torch.export.export(
        _Linears(layer), (torch.randn(3, k),), dynamic_shapes=({0: m},), strict=False
    )
    edge = to_edge_transform_and_lower(
        ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)
    )
    path.write_bytes(edge.to_executorch().buffer)


class KernelsMatchTheTorchOps(unittest.TestCase):
    """ExecuTorch's q4/q8 kernels and the torch ops, bit for bit, per path."""

    @classmethod
    def setUpClass(cls):
        artifacts.register_et_kernels()
        cls.dir = Path(tempfile.mkdtemp())
        g = torch.Generator().manual_seed(0)
        cls.cases = []
        # K % 32 != 0, K a multiple of 32 but not of 256; bias or not.
        for n, k, bias in ((37, 96, True), (64, 608, False), (19, 100, True)):
            w = torch.randn(n, k, generator=g) * 0.1
            b = torch.randn(n, generator=g) if bias else None
            for kind, layer in (
                ("q4", q4.Q4Linear.from_float(w, b)),
                ("q8", q4.Q8Linear(*_q8_codes(w, g), b) if k % 32 == 0 else None),
            ):
                if layer is None:
                    continue
                path = cls.dir / f"{kind}-{n}x{k}.pte"
                _program(layer, k, path)
                cls.cases.append((f"{kind} {n}x{k}", layer, k, path))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)
        et_ops.force_isa("")

    def test_every_path_every_m(self):
        from executorch.runtime import Runtime

        g = torch.Generator().manual_seed(1)
        ran = []
        for isa in ISAS:
            if not et_ops.force_isa(isa):
                continue  # this CPU cannot run it
            ran.append(isa)
            with q4.using_isa(isa):
                for name, layer, k, path in self.cases:
                    method = Runtime.get().load_program(str(path)).load_method("forward")
                    for m in range(1, 10):
                        x = torch.randn(m, k, generator=g)
                        with torch.no_grad():
                            want = layer(x)
                        got = method.execute([x])[0]
                        with self.subTest(isa=isa, case=name, m=m):
                            self.assertTrue(torch.equal(got, want), (got - want).abs().max())
        et_ops.force_isa("")
        self.assertIn("scalar", ran)


class Q8Gguf(unittest.TestCase):
    """A Q8_0 GGUF (every linear Q8_0, as llama.cpp's Q8_0 files are) runs
    its own 8-bit blocks: with linear:int4's GGUF-native spec through the q8
    op, and by default (the .pt2 export_llm writes without --quantize)
    through ggml_linear; the same greedy ids."""

    def test_default_pt2_runs_the_q8_0_blocks(self):
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        ckpt = tiny_model.write_checkpoint(tmp / "ckpt", max_seq_len=256)
        gguf = tiny_model.write_gguf(ckpt, tmp / "q8.gguf", linears=("Q8_0",))
        pt2_path = tmp / "model.pt2"
        args = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        args += ["--output-aoti-package-path", str(pt2_path), "--max-seq-length", str(MAX_SEQ)]
        self.assertEqual(export_llm.main(args + ["--quiet"]), 0)
        source = load_source(gguf, ckpt / "tokenizer.json")
        eager = build(source, "fp32", MAX_SEQ)
        quantized = source.ckpt.gguf_quantized
        counts = tc_quant.quantize_model(
            eager, tc_quant.gguf_native_spec(eager, quantized), quantized
        )
        self.assertEqual(
            {k: v for k, v in counts.items() if v},
            {"q8_0_exact_from_gguf": 14, "embedding_q8_0": 1, "output_q8_0": 1},
        )
        pt2 = artifacts.load_pt2(pt2_path)
        self.assertEqual(
            json.loads(pt2.metadata["quantize"]), {"gguf Q8_0": 15, "gguf embedding Q8_0": 1}
        )
        with torch.no_grad():
            want = greedy(eager, PROMPT_IDS, STEPS)
        self.assertEqual(greedy(pt2, PROMPT_IDS, STEPS), want)


def _q8_codes(w: torch.Tensor, g: torch.Generator):
    n, k = w.shape
    qs = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, k // 32, generator=g) * 0.01).to(torch.float16)
    return qs, scales


if __name__ == "__main__":
    unittest.main()
