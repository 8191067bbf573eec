"""GGUF tensors of every supported type load to gguf's reference values.

Each type is written to a real GGUF file with gguf's writer, read back
through torchchat's loader path (reader -> logical shape -> float32) and
compared with `gguf.quants.dequantize` on the original bytes. Q4_0/Q4_1
also go through torchchat's own nibble unpacking into int4 codes.
"""

import os
import tempfile
import unittest

import gguf
import numpy as np
import torch

from torchchat.checkpoint import dequantize_gguf_tensor
from torchchat.quantize import Int4Linear, gguf_q4_codes

T = gguf.GGMLQuantizationType
ROWS, COLS = 16, 512  # int4pack needs rows % 16; K-quants need cols % 256


def _raw_k_blocks(qtype, rng):
    """Random K-quant blocks with finite fp16 super-block scales.

    gguf has no K-quant quantizer, so the blocks are random bytes except the
    fp16 scale fields, which are set to sane values.
    """
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    n = ROWS * COLS // block
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.05, size=(n, 2)).astype(np.float16).view(np.uint8)
    if qtype == T.Q6_K:  # ql[128] qh[64] scales[16] d(fp16)
        raw[:, -2:] = scales[:, 0:2]
    else:  # Q4_K / Q5_K start with d, dmin (fp16)
        raw[:, 0:4] = scales
    return raw.reshape(ROWS, -1)


class GGUFDequantTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(0)
        cls.dir = tempfile.TemporaryDirectory()
        cls.path = os.path.join(cls.dir.name, "types.gguf")
        w = gguf.GGUFWriter(cls.path, "llama")
        cls.raw = {}
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
            q = gguf.quants.quantize(x, t)
            cls.raw[t] = q
            if t == T.F32:
                w.add_tensor(t.name, q)
            else:
                w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=t)
        for t in (T.Q4_K, T.Q5_K, T.Q6_K):
            q = _raw_k_blocks(t, rng)
            cls.raw[t] = q
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        cls.reader = gguf.GGUFReader(cls.path)
        cls.tensors = {t.name: t for t in cls.reader.tensors}

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_every_type_matches_reference(self):
        self.assertEqual(len(self.tensors), 11)
        for t, raw in self.raw.items():
            with self.subTest(t.name):
                got = dequantize_gguf_tensor(self.tensors[t.name])
                ref = gguf.quants.dequantize(raw, t).reshape(ROWS, COLS)
                self.assertEqual(got.shape, (ROWS, COLS))
                self.assertEqual(got.dtype, np.float32)
                self.assertTrue(np.isfinite(ref).all())
                np.testing.assert_array_equal(got, ref)

    def test_q4_codes_are_exact(self):
        for t in (T.Q4_0, T.Q4_1):
            with self.subTest(t.name):
                q, scale, zero = gguf_q4_codes(t.name, self.raw[t], (ROWS, COLS))
                self.assertTrue(((q >= 0) & (q <= 15)).all())
                s = scale.repeat_interleave(32, 1)
                z = zero.repeat_interleave(32, 1)
                ours = (q.float() - 8) * s + z
                ref = torch.from_numpy(gguf.quants.dequantize(self.raw[t], t))
                torch.testing.assert_close(ours, ref.reshape(ROWS, COLS), rtol=0, atol=1e-6)

    def test_int4_linear_reproduces_q4_1(self):
        raw = self.raw[T.Q4_1]
        lin = Int4Linear.from_codes(*gguf_q4_codes("Q4_1", raw, (ROWS, COLS)), 32)
        ref = torch.from_numpy(gguf.quants.dequantize(raw, T.Q4_1)).reshape(ROWS, COLS)
        torch.testing.assert_close(lin.dequantized(), ref, rtol=0, atol=1e-5)
        x = torch.randn(3, COLS)
        torch.testing.assert_close(lin(x), x @ ref.T, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    unittest.main()
