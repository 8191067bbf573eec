"""direct_gguf writes llama.cpp's Q4_K_M layout, and the file runs."""

from __future__ import annotations

import tempfile
import unittest
from collections import Counter
from pathlib import Path

import gguf
import torch

from runner.bench.direct_gguf import q4_k_m_types, write_q4_k_m
from torchchat.checkpoint import load_checkpoint
from torchchat.checkpoint.build import load_native

TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 512,
    "max_position_embeddings": 16384,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def tokenizer_gguf(path: Path, vocab: int) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["t 1"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class DirectGGUFTest(unittest.TestCase):
    def test_layout_is_llama_cpps(self):
        # llama_model_quantize's own Q4_K_M files: the Llama 3.2 1B shape (16
        # layers, tied embedding; compared tensor by tensor with one it
        # wrote) and Llama 3.1 8B (32 layers, untied; its published file's
        # load log: q4_K 193 tensors, q6_K 33).
        self.assertEqual(Counter(q4_k_m_types(16, tied=True).values()), {"Q4_K": 96, "Q6_K": 17})
        self.assertEqual(Counter(q4_k_m_types(32, tied=False).values()), {"Q4_K": 193, "Q6_K": 33})
        types = q4_k_m_types(16, tied=True)
        more = [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
        self.assertEqual(more, [0, 1, 4, 7, 10, 13, 14, 15])

    def test_file_loads_and_runs(self):
        with tempfile.TemporaryDirectory() as d:
            tok = Path(d) / "tok.gguf"
            tokenizer_gguf(tok, TINY["vocab_size"])
            out = Path(d) / "tiny-Q4_K_M.gguf"
            write_q4_k_m(TINY, tok, out)
            r = gguf.GGUFReader(str(out))
            self.assertEqual(r.fields["tokenizer.ggml.tokens"].contents()[:3], ["t0", "t1", "t2"])
            self.assertEqual(r.fields["tokenizer.ggml.eos_token_id"].contents(), 2)
            types = {t.name: t.tensor_type.name for t in r.tensors if t.tensor_type.name != "F32"}
            self.assertEqual(types, q4_k_m_types(8, tied=False))
            ckpt = load_checkpoint(out)
            self.assertEqual(ckpt.config.n_layers, 8)
            self.assertIsNotNone(ckpt.rope_freq_factors)
            model, counts = load_native(ckpt, max_seq_length=64)
            self.assertTrue(all("dequantized" not in k for k in counts), counts)
            with torch.no_grad():
                logits = model(torch.tensor([[1, 5, 9, 3]]), torch.arange(4))
            self.assertTrue(bool(torch.isfinite(logits).all()))
            self.assertGreater(float(logits.std()), 0.0)


if __name__ == "__main__":
    unittest.main()
