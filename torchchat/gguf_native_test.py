"""A GGUF run in its own formats, read in place, equals the same weights
dequantized: every format the kernels run, mixed in one file as llama.cpp
writes them, tied or not, and with qwen3's rows moved; and the file's bytes
are used where they lie (views of the mmapped file, never copies)."""

import os
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from kernels.ggml import ops
from testing import gguf_blocks
from torchchat.checkpoint import load_checkpoint, load_model, load_native
from torchchat.generate import greedy
from torchchat.model import attend_filled_cache

# Longer than the kernels' decode path (31 rows and less): prefill runs the
# exact tiles, and attention torch's SDPA (kernels/README.md, row_sdpa).
PROMPT = [0, 17, 250, 3, 99, 400, 12, 5, 77, 310, 2, 64] * 3


def pair(path: Path):
    """(native, dequantized) models of one file."""
    ckpt = load_checkpoint(path)
    native, counts = load_native(ckpt, 128)
    dense = load_model(ckpt, torch.float32, 128)
    return attend_filled_cache(native), attend_filled_cache(dense), counts


class GGUFNativeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assert_same(self, path: Path, expect: dict) -> None:
        native, dense, counts = pair(path)
        for key, n in expect.items():
            self.assertEqual(counts.get(key), n, counts)
        with torch.no_grad(), ops.using_decode_x("int16"):
            a = native(torch.tensor([PROMPT]), torch.arange(len(PROMPT)))
            native.reset_cache()
            b = dense(torch.tensor([PROMPT]), torch.arange(len(PROMPT)))
            dense.reset_cache()
        # Prefill runs the exact tiles, and the last row's output layer
        # rounds x to int16 per block of 32: float sums in another order only.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
        # Decode with x at 16 bits: the ids still agree.
        with ops.using_decode_x("int16"):
            self.assertEqual(greedy(native, PROMPT, 16), greedy(dense, PROMPT, 16), path.name)
        # The default rounds x to 8 bits, as llama.cpp does: on these random
        # weights, logits within a few percent of their range.
        with torch.no_grad():
            step = torch.tensor([[PROMPT[0]]]), torch.tensor([0])
            c = native(*step)
            native.reset_cache()
            d = dense(*step)
            dense.reset_cache()
        torch.testing.assert_close(c, d, rtol=0, atol=4e-2 * float(d.abs().max()))

    def test_each_format(self):
        for qtype in gguf_blocks.TYPES:
            with self.subTest(qtype=qtype):
                path = gguf_blocks.write_model(self.dir / f"{qtype}.gguf", {"*": qtype})
                self.assert_same(path, {qtype: 15, f"embedding {qtype}": 1})

    def test_mixed_like_q4_k_m_tied(self):
        # Q4_K_M's mix: Q6_K for attn_v and ffn_down of some layers, Q4_K
        # elsewhere, a Q6_K embedding tied to the output.
        types = {
            "*": "Q4_K",
            "blk.0.attn_v.weight": "Q6_K",
            "blk.1.ffn_down.weight": "Q6_K",
            "token_embd.weight": "Q6_K",
        }
        path = gguf_blocks.write_model(self.dir / "mixed.gguf", types, tie=True)
        self.assert_same(path, {"Q4_K": 12, "Q6_K": 3, "embedding Q6_K": 1})
        native, _, _ = pair(path)
        t = native.transformer
        # One constant for both: a tied output reads the embedding's bytes.
        self.assertIs(t.output.weight, t.tok_embeddings.weight)

    def test_qwen3_rows_move_exactly(self):
        path = gguf_blocks.write_model(
            self.dir / "qwen3.gguf", {"*": "Q5_K", "attn_k.weight": "IQ4_XS"}, arch="qwen3"
        )
        self.assert_same(path, {"Q5_K": 13, "IQ4_XS": 2})

    def test_weights_are_the_files_bytes(self):
        path = gguf_blocks.write_model(self.dir / "inplace.gguf", {"*": "Q8_0"})
        ckpt = load_checkpoint(path)
        native, _ = load_native(ckpt, 64)
        base = ckpt.gguf["layers.0.attention.wq.weight"].blocks
        while isinstance(base.base, np.ndarray):  # up to the mapping of the whole file
            base = base.base
        start, size = base.ctypes.data, os.path.getsize(path)
        self.assertEqual(base.size, size)  # the whole file, mapped
        quantized = [(n, b) for n, b in native.named_buffers() if b.dtype == torch.uint8]
        self.assertEqual(len(quantized), 15 + 1)  # the linears and the embedding
        for name, buf in quantized:
            self.assertTrue(start <= buf.data_ptr() < start + size, f"{name} was copied")

    def test_a_format_the_kernels_lack_is_dequantized(self):
        # IQ2_XXS (and its like) still loads: as float, counted as such.
        path = gguf_blocks.write_model(
            self.dir / "iq2.gguf", {"*": "Q8_0", "blk.0.attn_q.weight": "IQ2_XXS"}
        )
        self.assert_same(path, {"Q8_0": 14, "IQ2_XXS->F32": 1})


if __name__ == "__main__":
    unittest.main()
