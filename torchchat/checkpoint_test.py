"""Tiny random models in every checkpoint format load and match transformers.

transformers builds each architecture from a tiny config with random
weights and writes it with save_pretrained; the same weights are also
written as a Meta consolidated.00.pth + params.json and as a GGUF (F32 and
Q8_0). torchchat must load each and reproduce the transformers logits.
"""

import base64
import json
import os
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf
import numpy as np
import torch
import transformers

from testing import tiny_model
from torchchat import tokenizer as tc_tokenizer
from torchchat.checkpoint import (
    LLAMA3_CHAT_TEMPLATE,
    CheckpointError,
    hf_tensor_name,
    hf_to_meta_rope,
    load_checkpoint,
    load_model,
)

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)
SEQ = [3, 17, 42, 9, 100, 5, 77, 31, 200, 8, 64, 1]


def tiny(model_type, **extra):
    cfg = transformers.AutoConfig.for_model(model_type, **{**BASE, **extra})
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # norms start at 1; randomise them so layout bugs show
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in n else 0.0))
    return m


def ref_logits(m):
    with torch.no_grad():
        return m(torch.tensor([SEQ])).logits


def our_logits(path):
    model = load_model(load_checkpoint(path), torch.float32, 64, full_logits=True)
    with torch.inference_mode():
        return model(torch.tensor([SEQ]), torch.arange(len(SEQ)))


def meta_state_dict(m):
    cfg = m.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    sd = {}
    for k, v in m.state_dict().items():
        name = hf_tensor_name(k)
        if name is None:
            continue
        if name.endswith("wq.weight"):
            v = hf_to_meta_rope(v, cfg.num_attention_heads, hd)
        elif name.endswith("wk.weight"):
            v = hf_to_meta_rope(v, cfg.num_key_value_heads, hd)
        sd[name] = v.clone()
    return sd


class CheckpointFormatsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def check_hf(self, model_type, shard=False, name=None, **extra):
        m = tiny(model_type, **extra)
        out = self.dir / (name or model_type)
        m.save_pretrained(out, max_shard_size="40KB" if shard else "1GB")
        if shard:
            self.assertTrue((out / "model.safetensors.index.json").exists())
        torch.testing.assert_close(our_logits(out), ref_logits(m), rtol=1e-4, atol=1e-4)
        return m

    def test_hf_llama(self):
        self.check_hf("llama")

    def test_hf_llama_sharded_tied(self):
        self.check_hf("llama", shard=True, tie_word_embeddings=True)

    def test_hf_llama31_rope_scaling(self):
        # Llama 3.1's values, then values ExecuTorch's own scaling cannot
        # express (it hard-codes low_freq_factor 1 and an 8192 context). With
        # head_dim 16 and theta 5e5 the wavelengths are 6, 33, 168, ...
        # positions: an original context of 256 with factors 2 and 8 keeps
        # the first, blends the second and slows the rest, so every branch
        # of the formula shows in the frequencies and in the logits.
        for i, (low, high, old) in enumerate(((1.0, 4.0, 8192), (2.0, 8.0, 256))):
            with self.subTest(low_freq_factor=low, high_freq_factor=high, original=old):
                name = f"llama-rope{i}"
                m = self.check_hf(
                    "llama",
                    name=name,
                    rope_scaling={
                        "rope_type": "llama3",
                        "factor": 8.0,
                        "low_freq_factor": low,
                        "high_freq_factor": high,
                        "original_max_position_embeddings": old,
                    },
                    head_dim=16,
                    rope_theta=500000.0,
                )
                model = load_model(load_checkpoint(self.dir / name), torch.float32, 64)
                inv = m.model.rotary_emb.inv_freq.float()
                rope = model.transformer.rope
                ours = torch.atan2(rope.freqs_sin[1], rope.freqs_cos[1])
                torch.testing.assert_close(ours, inv, rtol=1e-5, atol=1e-6)

    def test_hf_mistral(self):
        self.check_hf("mistral", sliding_window=None)

    def test_hf_qwen2_qkv_bias(self):
        self.check_hf("qwen2", tie_word_embeddings=True, use_sliding_window=False)

    def test_hf_granite_multipliers(self):
        self.check_hf(
            "granite",
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.015625,
            logits_scaling=8.0,
        )

    def test_meta_consolidated(self):
        m = tiny("llama")
        d = self.dir / "meta"
        d.mkdir()
        torch.save(meta_state_dict(m), d / "consolidated.00.pth")
        (d / "params.json").write_text(
            json.dumps(
                {
                    "dim": 64,
                    "n_layers": 2,
                    "n_heads": 4,
                    "n_kv_heads": 2,
                    "vocab_size": 256,
                    "norm_eps": 1e-5,
                    "rope_theta": 10000.0,
                }
            )
        )
        torch.testing.assert_close(our_logits(d), ref_logits(m), rtol=1e-4, atol=1e-4)

    def test_meta_llama3_gets_the_builtin_chat_format(self):
        # A tiktoken tokenizer.model (Llama 3's format): 256 byte tokens and
        # two merges; the tokenizer library adds Llama 3's special tokens
        # after them. A SentencePiece tokenizer.model gets no template.
        d = self.dir / "meta3"
        d.mkdir()
        ranks = [bytes([b]) for b in range(256)] + [b"He", b"llo"]
        (d / "tokenizer.model").write_bytes(
            b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ranks))
        )
        (d / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4}))
        m = tiny("llama")
        torch.save(meta_state_dict(m), d / "consolidated.00.pth")
        ckpt = load_checkpoint(d)
        self.assertEqual(ckpt.chat_template, LLAMA3_CHAT_TEMPLATE)
        tok = tc_tokenizer.load(ckpt.tokenizer_path, chat_template=ckpt.chat_template)
        text = tok.template().render(
            [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hello"}],
            add_generation_prompt=True,
        )
        self.assertEqual(
            text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        )
        ids = tok.encode(text, bos=False)
        self.assertEqual(ids[0], 258)  # <|begin_of_text|>, after the 258 ranks
        self.assertIn(258 + 9, ids)  # <|eot_id|>

        (d / "tokenizer.model").write_bytes(b"\x0a\x05\x0a\x01a\x15\x00\x00\x00\x00")
        self.assertIsNone(load_checkpoint(d).chat_template)

    def write_gguf(self, m, path, qtype):
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_block_count(2)
        w.add_embedding_length(64)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_context_length(128)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        for k, v in meta_state_dict(m).items():
            name = tiny_model.gguf_name(k)
            arr = v.numpy().astype(np.float32)
            if qtype == gguf.GGMLQuantizationType.F32 or arr.ndim == 1:
                w.add_tensor(name, arr)
            else:
                q = gguf.quants.quantize(arr, qtype)
                w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def test_gguf_f32_and_q8_0(self):
        m = tiny("llama")
        ref = ref_logits(m)
        for qtype, tol in (
            (gguf.GGMLQuantizationType.F32, 1e-4),
            (gguf.GGMLQuantizationType.Q8_0, 0.05),
        ):
            with self.subTest(qtype.name):
                p = self.dir / f"tiny-{qtype.name}.gguf"
                self.write_gguf(m, p, qtype)
                torch.testing.assert_close(our_logits(p), ref, rtol=0, atol=tol)

    def test_bad_checkpoints_are_one_clear_error(self):
        corrupt = self.dir / "corrupt.gguf"
        corrupt.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(64))
        empty = self.dir / "empty"
        empty.mkdir()
        for path, msg in (
            (self.dir / "missing.gguf", "not found"),
            (corrupt, "GGUF"),
            (empty, "not a recognised checkpoint"),
        ):
            with self.subTest(str(path)):
                with self.assertRaisesRegex(CheckpointError, msg):
                    load_checkpoint(path)


if __name__ == "__main__":
    unittest.main()
