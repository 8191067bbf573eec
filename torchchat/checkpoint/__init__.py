"""Checkpoint loading: GGUF (gguf.py), HF safetensors (hf.py) and Meta
consolidated .pth (meta.py).

Every reader returns a `Checkpoint`: a `ModelConfig` plus weights in Meta
names and Meta RoPE layout (what `torchchat.model` consumes). A GGUF keeps
each tensor as the file holds it; build.py turns a Checkpoint into a model,
with float weights (`load_model`) or a GGUF's own formats (`load_native`).
"""

from torchchat.checkpoint.base import (
    Checkpoint,
    CheckpointError,
    GGUFQuantized,
    GGUFTensor,
    hf_to_meta_rope,
    load_checkpoint,
    stage_name,
)
from torchchat.checkpoint.build import load_model, load_native
from torchchat.checkpoint.gguf import dequantize_gguf_tensor
from torchchat.checkpoint.hf import hf_tensor_name
from torchchat.checkpoint.meta import LLAMA3_CHAT_TEMPLATE

__all__ = [
    "LLAMA3_CHAT_TEMPLATE",
    "Checkpoint",
    "CheckpointError",
    "GGUFQuantized",
    "GGUFTensor",
    "dequantize_gguf_tensor",
    "hf_tensor_name",
    "hf_to_meta_rope",
    "load_checkpoint",
    "load_model",
    "load_native",
    "stage_name",
]
