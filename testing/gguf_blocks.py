"""Random GGUF tensors of any ggml format, and tiny GGUF models built from
them: random bytes are valid blocks of every format once their fp16 scale
fields are small and finite, so each format's every code and scale pattern
appears."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# (elements, bytes) per block, and the byte offsets of its fp16 scales.
BLOCKS = {
    "Q4_0": (32, 18, (0,)),
    "Q4_1": (32, 20, (0, 2)),
    "Q5_0": (32, 22, (0,)),
    "Q5_1": (32, 24, (0, 2)),
    "Q8_0": (32, 34, (0,)),
    "Q2_K": (256, 84, (80, 82)),
    "Q3_K": (256, 110, (108,)),
    "Q4_K": (256, 144, (0, 2)),
    "Q5_K": (256, 176, (0, 2)),
    "Q6_K": (256, 210, (208,)),
    "IQ4_NL": (32, 18, (0,)),
    "IQ4_XS": (256, 136, (0,)),
    # Not run by the kernels: loads dequantized.
    "IQ2_XXS": (256, 66, (0,)),
}
FLOATS = ("F32", "F16", "BF16")
# The formats //kernels/ggml runs.
TYPES = FLOATS + tuple(t for t in BLOCKS if t != "IQ2_XXS")


def random_tensor(qtype: str, n: int, k: int, seed: int, scale: float = 0.02) -> np.ndarray:
    """uint8 [n, row_bytes]: random codes, small finite scales (values of
    about `scale`)."""
    rng = np.random.default_rng(seed)
    if qtype in FLOATS:
        w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
        if qtype == "F16":
            return w.astype(np.float16).view(np.uint8)
        if qtype == "BF16":
            return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return w.view(np.uint8)
    elems, nbytes, halves = BLOCKS[qtype]
    raw = rng.integers(0, 256, size=(n, k // elems, nbytes), dtype=np.uint8)
    # Codes reach ~15 (4 bits) to ~127 (8 bits) times a 6-bit sub-scale in
    # K-quants: the block scale is sized so values stay about `scale`.
    span = {"Q8_0": 64.0, "IQ4_NL": 64.0, "IQ4_XS": 64.0 * 32}.get(qtype, 8.0)
    if qtype.endswith("_K"):
        span *= 32.0
    for off in halves:
        d = (np.abs(rng.standard_normal((n, k // elems))) * scale / span).astype(np.float16)
        raw[:, :, off : off + 2] = d.view(np.uint8).reshape(n, k // elems, 2)
    return raw.reshape(n, -1)


def dequantize(qtype: str, raw: np.ndarray, k: int) -> np.ndarray:
    """float32 [n, k] as gguf-py dequantizes it."""
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.dequantize(raw, t).reshape(raw.shape[0], k).astype(np.float32)


def write_model(
    path: os.PathLike[str] | str,
    types: dict[str, str],
    dim: int = 256,
    hidden: int = 512,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab: int = 512,
    arch: str = "llama",
    tie: bool = False,
    seed: int = 0,
) -> Path:
    """A tiny random GGUF model. `types` maps a GGUF tensor name
    ("blk.0.attn_q.weight", "token_embd.weight", ...) or a suffix
    ("attn_q.weight", "*" for every other matrix) to its type; norms are
    F32. qwen3 adds per-head q/k norms."""
    import gguf

    path = Path(path)
    head_dim = dim // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_context_length(512)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    mats = {"token_embd.weight": (vocab, dim)}
    if not tie:
        mats["output.weight"] = (vocab, dim)
    norms = {"output_norm.weight": dim}
    for i in range(n_layers):
        p = f"blk.{i}."
        mats.update(
            {
                p + "attn_q.weight": (n_heads * head_dim, dim),
                p + "attn_k.weight": (n_kv_heads * head_dim, dim),
                p + "attn_v.weight": (n_kv_heads * head_dim, dim),
                p + "attn_output.weight": (dim, n_heads * head_dim),
                p + "ffn_gate.weight": (hidden, dim),
                p + "ffn_up.weight": (hidden, dim),
                p + "ffn_down.weight": (dim, hidden),
            }
        )
        norms.update({p + "attn_norm.weight": dim, p + "ffn_norm.weight": dim})
        if arch == "qwen3":
            norms.update({p + "attn_q_norm.weight": head_dim, p + "attn_k_norm.weight": head_dim})
    T = gguf.GGMLQuantizationType
    for j, (name, (n, k)) in enumerate(mats.items()):
        suffix = name.split(".", 2)[-1] if name.startswith("blk.") else name
        qtype = types.get(name) or types.get(suffix) or types.get("*", "F32")
        raw = random_tensor(qtype, n, k, seed * 1000 + j)
        if qtype == "F32":
            w.add_tensor(name, raw.view(np.float32))
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=T[qtype])
    rng = np.random.default_rng(seed + 7)
    for name, n in norms.items():
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
