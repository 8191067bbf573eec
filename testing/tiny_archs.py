"""Tiny random transformers models of each architecture we load, with the
architecture's own switches on, for parity and export tests."""

import torch
import transformers

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
CONFIGS = {
    "llama": transformers.LlamaConfig(**COMMON, rope_theta=10000.0),
    "qwen2": transformers.Qwen2Config(**COMMON, rope_theta=1e6),
    # head_dim 32 with hidden 64 / 4 heads: Qwen3 sets head_dim on its own.
    "qwen3": transformers.Qwen3Config(**COMMON, head_dim=32, rope_theta=1e6),
}


def hf_model(arch: str) -> "transformers.PreTrainedModel":
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch], dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            # Norm weights start at 1 (and biases at 0), where a wrong layout
            # or a missing norm would go unnoticed.
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return m
