"""The built-in model matches transformers loading the same GGUF.

transformers dequantizes the GGUF with its own code and un-permutes Q/K into
HF layout; torchchat keeps Meta layout and runs ExecuTorch's Transformer.
Agreement checks the weights mapping, RoPE layout, tied embeddings and the
static-KV-cache decode path together.
"""

import os
import unittest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from testing.tiny_archs import hf_greedy
from torchchat import registry
from torchchat.checkpoint import load_checkpoint, load_model
from torchchat.generate import Slot, Stats, argmax, decode
from torchchat.model import attend_filled_cache

# The built-in chat template around "Why is the sky blue?".
PROMPT = [1, 4093, 198, 4898, 314, 260, 6376, 4461, 47, 2, 198, 1, 520, 9531, 198]


def hf_model(path):
    cfg = load_gguf_checkpoint(path)["config"]
    m = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**cfg), dtype=torch.float32
    ).eval()
    sd = load_gguf_checkpoint(path, return_tensors=True, model_to_load=m)["tensors"]
    m.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=False)
    m.tie_weights()
    return m


class ParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.path = str(registry.model_path(registry.resolve("smollm2-135m-instruct")))
        cls.ckpt = load_checkpoint(cls.path)
        cls.ref = hf_model(cls.path)
        # One model for both checks: full logits for prefill, last row for decode.
        cls.model = attend_filled_cache(load_model(cls.ckpt, torch.float32, 256, full_logits=True))

    def test_config_from_gguf(self):
        c = self.ckpt.config
        self.assertEqual((c.n_layers, c.dim, c.n_heads, c.n_kv_heads), (30, 576, 9, 3))
        self.assertEqual(c.rope_theta, 1e5)
        self.assertTrue(c.tie_embeddings)
        self.assertEqual((self.ckpt.bos_id, self.ckpt.eos_ids), (1, (2,)))
        kinds = [q.qtype for q in self.ckpt.gguf_quantized.values()]
        self.assertEqual(sum(k in ("Q4_0", "Q4_1") for k in kinds), 210)
        # The tied unembedding keeps GGUF's Q8_0 blocks, as the embedding.
        self.assertEqual(self.ckpt.gguf_quantized["output.weight"].qtype, "Q8_0")
        self.assertIs(
            self.ckpt.gguf_quantized["output.weight"],
            self.ckpt.gguf_quantized["tok_embeddings.weight"],
        )

    def test_prefill_logits_match(self):
        ids = torch.tensor([PROMPT])
        with torch.inference_mode():
            ours = self.model(ids, torch.arange(len(PROMPT)))
            ref = self.ref(ids).logits
        self.assertEqual(ours.shape, ref.shape)
        self.assertLessEqual((ours - ref).abs().max().item(), 1e-3)

    def test_greedy_64_tokens_match(self):
        # The prompt holds <|im_end|> (id 2, also the pad id): an explicit
        # attention mask keeps generate from masking it out as padding.
        ref = hf_greedy(self.ref, torch.tensor([PROMPT]), 64, pad_token_id=2)
        model = self.model

        class LastPosition:
            max_seq_length = model.max_seq_length

            def __call__(self, tokens, input_pos):
                return model(tokens, input_pos)[:, -1]

        stats = Stats()
        ours = list(decode(Slot(LastPosition()), PROMPT, argmax, 64, stats=stats))
        self.assertEqual(len(ref), 64)
        self.assertEqual(ours, ref)
        self.assertEqual(stats.num_generated_tokens, 64)


if __name__ == "__main__":
    unittest.main()
