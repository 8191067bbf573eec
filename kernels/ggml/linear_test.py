"""Every GGUF format the kernels run, against gguf-py's own dequantize().

Random bytes make valid blocks of any format once their fp16 scale fields
hold finite values, so each format gets weights with every code and scale
pattern; gguf.quants.dequantize (the reference implementation llama.cpp's
Python package ships) gives the float weights, and x @ W^T in float64 is
the reference product.
"""

import unittest

import numpy as np
import torch

from kernels.ggml import ops
from testing import gguf_blocks

FLOATS = gguf_blocks.FLOATS
# The formats with an int8 prefill GEMM (linear.cc's Gemm8Avx2/Gemm8Vnni):
# with int8 x they round x at every m, with decode's bits per row.
GEMM_INT8 = tuple(t for t in ops.TYPES if t not in FLOATS and t != "Q3_K")


def random_tensor(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    return gguf_blocks.random_tensor(qtype, n, k, seed, scale=1.0)


def reference_weights(qtype: str, raw: np.ndarray, k: int) -> np.ndarray:
    return gguf_blocks.dequantize(qtype, raw, k).astype(np.float64)


class LinearTest(unittest.TestCase):
    N, K = 40, 512

    def check(self, qtype: str, m: int, isa: str = "", x: str = "int16") -> None:
        raw = random_tensor(qtype, self.N, self.K, seed=m + 7 * len(qtype))
        w = reference_weights(qtype, raw, self.K)
        xs = np.random.default_rng(1).standard_normal((m, self.K)).astype(np.float32)
        bias = np.random.default_rng(2).standard_normal(self.N).astype(np.float32)
        ref = xs.astype(np.float64) @ w.T + bias
        scale = np.abs(xs).astype(np.float64) @ np.abs(w).T + 1e-6
        lin = ops.GGMLLinear(torch.from_numpy(raw), qtype, self.N, self.K, torch.from_numpy(bias))
        with ops.using_isa(isa), ops.using_decode_x(x):
            y = lin(torch.from_numpy(xs)).double().numpy()
        # Below 32 rows block formats round x, to int16 per block of 32
        # (2^-16 of the block's largest value) or int8 (1/254 of it) per 32,
        # or per 256 for the 256-element formats (K-quants, IQ4_XS: as
        # llama.cpp's Q8_K), and so do the GEMM formats' int8 at any m;
        # from 32 the others' tiles, float formats and the scalar path are
        # exact up to fp32 sums.
        gemm = x == "int8" and qtype in GEMM_INT8
        rounded = (m < 32 or gemm) and isa != "scalar" and qtype not in FLOATS
        tol = 3e-5 if rounded else 2e-6
        if rounded and x == "int8":
            # Each x off by at most 1/254 of its block's largest |x|.
            xb = 256 if ops.BLOCKS[qtype][0] == 256 else 32
            amax = np.repeat(np.abs(xs).reshape(m, -1, xb).max(axis=2), xb, axis=1) / 254
            scale = scale + amax.astype(np.float64) @ np.abs(w).T / tol
        err = np.max(np.abs(y - ref) / scale)
        self.assertLess(err, tol, f"{qtype} m={m} isa={isa or ops.isa()} x={x}: {err:.2e}")

    def test_every_format_decode(self) -> None:
        for qtype in ops.TYPES:
            for m in (1, 3):
                self.check(qtype, m)

    def test_every_format_decode_int8(self) -> None:
        for isa in ("avx2", ""):  # "" is AVX-512 VNNI where the CPU has it
            for qtype in ops.TYPES:
                for m in (1, 3, 5, 16, 40):  # 5: four rows at once, then one
                    self.check(qtype, m, isa, x="int8")

    def test_gemm_formats_prefill_int8(self) -> None:
        """The int8 GEMM, around the switch from the decode rows (32) and
        at a prompt's size, on both ISAs."""
        for isa in ("avx2", ""):
            for qtype in GEMM_INT8:
                for m in (31, 32, 33, 256):
                    self.check(qtype, m, isa, x="int8")

    def test_every_format_prefill(self) -> None:
        for qtype in ops.TYPES:
            self.check(qtype, 16)

    def test_every_format_scalar(self) -> None:
        for qtype in ops.TYPES:
            self.check(qtype, 2, "scalar")

    def test_rows_independent_of_batch_and_threads(self) -> None:
        """Through the op and at::parallel_for: each row of one call of up
        to 31 rows (block formats; floats, and the GEMM formats' int8, at
        any m) on 2 threads is bit for bit that row alone on 1 thread, so a
        speculative draft's check changes no id, nor does a prompt's
        prefill."""
        n, k, m = 264, 512, 40
        x = torch.from_numpy(np.random.default_rng(3).standard_normal((m, k)).astype(np.float32))
        threads = torch.get_num_threads()
        try:
            for qtype in ops.TYPES:
                raw = random_tensor(qtype, n, k, seed=11)
                lin = ops.GGMLLinear(torch.from_numpy(raw), qtype, n, k)
                for isa in ("avx2", ""):
                    for dx in ("int8", "int16"):
                        with ops.using_isa(isa), ops.using_decode_x(dx):
                            torch.set_num_threads(1)
                            alone = torch.cat([lin(x[i : i + 1]) for i in range(m)])
                            torch.set_num_threads(2)
                            any_m = qtype in FLOATS or (qtype in GEMM_INT8 and dx == "int8")
                            for rows in (8, 31, 33, 40) if any_m else (8, 31):
                                with self.subTest(qtype=qtype, isa=isa or ops.isa(), x=dx, m=rows):
                                    self.assertTrue(torch.equal(lin(x[:rows]), alone[:rows]))
        finally:
            torch.set_num_threads(threads)

    def test_embedding_rows_equal_gguf(self) -> None:
        for qtype in ops.TYPES:
            raw = random_tensor(qtype, self.N, self.K, seed=3)
            w = reference_weights(qtype, raw, self.K)
            emb = ops.GGMLEmbedding(torch.from_numpy(raw), qtype, self.K)
            ids = torch.tensor([[5, 0], [39, 5]])
            got = emb(ids).double().numpy()
            np.testing.assert_allclose(got, w[ids.numpy()], rtol=1e-6, atol=1e-7, err_msg=qtype)
            self.assertEqual(torch.from_numpy(raw).numpy().tobytes(), raw.tobytes())

    def test_dequantized_matches(self) -> None:
        raw = random_tensor("Q6_K", 8, 256, seed=5)
        lin = ops.GGMLLinear(torch.from_numpy(raw), "Q6_K", 8, 256)
        np.testing.assert_allclose(
            lin.dequantized().double().numpy(), reference_weights("Q6_K", raw, 256), rtol=1e-6
        )

    def test_bad_shapes_are_one_line(self) -> None:
        raw = torch.zeros(4, 144, dtype=torch.uint8)
        with self.assertRaisesRegex(ops.GGMLError, r"Q4_K weight of 4x512 must be uint8"):
            ops.GGMLLinear(raw, "Q4_K", 4, 512)
        with self.assertRaisesRegex(ops.GGMLError, r"Q4_K row of 100 elements"):
            ops.row_bytes("Q4_K", 100)
        lin = ops.GGMLLinear(raw, "Q4_K", 4, 256)
        with self.assertRaisesRegex(RuntimeError, r"x must be a CPU float tensor ending in k=256"):
            lin(torch.zeros(1, 128))
        emb = ops.GGMLEmbedding(raw, "Q4_K", 256)
        with self.assertRaisesRegex(RuntimeError, r"id 4 is out of range \[0, 4\)"):
            emb(torch.tensor([4]))

    def test_export_traces_the_ops(self) -> None:
        raw = torch.from_numpy(random_tensor("Q4_K", 8, 256, seed=9))

        class M(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = ops.GGMLEmbedding(raw, "Q4_K", 256)
                self.lin = ops.GGMLLinear(raw, "Q4_K", 8, 256)

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.lin(self.emb(ids))

        ids = torch.tensor([[1, 2, 3]])
        ep = torch.export.export(M(), (ids,))
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        self.assertIn("torchchat.ggml_linear.default", targets)
        self.assertIn("torchchat.ggml_embedding.default", targets)
        torch.testing.assert_close(ep.module()(ids), M()(ids))


if __name__ == "__main__":
    unittest.main()
