"""A Q4_K_M GGUF of a real shape written directly, for shapes whose
bf16 -> F16 -> Q4_K_M route does not fit the disk (an 8B needs about 40 GB
on the way; this writes the 4.9 GB file only).

The layout is llama.cpp's Q4_K_M, tensor by tensor, as
llama_tensor_get_type chooses it: Q4_K everywhere, Q6_K for the output and
for attn_v and ffn_down in the layers `use_more_bits` picks, F32 norms and
rope_freqs. The quantized blocks are random bytes with small fp16 scales
(weights of about +-0.03, like a trained model's), so every value is finite;
speed and memory do not depend on the values. The tokenizer fields are
copied from a GGUF of the same tokenizer (real_files' llama3.2-1b file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Bytes per 256-value block, and the offsets of the fp16 scales to set.
_Q4_K_BLOCK = 144  # d, dmin (fp16), scales[12], qs[128]
_Q6_K_BLOCK = 210  # ql[128], qh[64], scales[16] (int8), d (fp16)


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get Q6_K
    in a Q4_K_M: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_types(n_layers: int, tied: bool) -> dict[str, str]:
    """GGUF tensor name -> type for the quantized tensors of a Llama Q4_K_M."""
    types = {"token_embd.weight": "Q6_K" if tied else "Q4_K"}
    if not tied:
        types["output.weight"] = "Q6_K"
    for i in range(n_layers):
        more = use_more_bits(i, n_layers)
        for part in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            types[f"blk.{i}.{part}.weight"] = "Q4_K"
        for part in ("attn_v", "ffn_down"):
            types[f"blk.{i}.{part}.weight"] = "Q6_K" if more else "Q4_K"
    return types


def _blocks(rows: int, cols: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    nb = cols // 256
    if kind == "Q4_K":
        b = rng.integers(0, 256, size=(rows, nb, _Q4_K_BLOCK), dtype=np.uint8)
        # d * 6-bit scale * 4-bit q - dmin * 6-bit min: |w| <= ~0.03.
        b[..., 0:2] = np.frombuffer(np.float16(3e-5).tobytes(), np.uint8)
        b[..., 2:4] = np.frombuffer(np.float16(1.5e-5).tobytes(), np.uint8)
    else:
        b = rng.integers(0, 256, size=(rows, nb, _Q6_K_BLOCK), dtype=np.uint8)
        # d * int8 scale * (6-bit q - 32): |w| <= ~0.03.
        b[..., 208:210] = np.frombuffer(np.float16(7e-6).tobytes(), np.uint8)
    return b.reshape(rows, nb * b.shape[-1])


def _llama3_rope_freqs(cfg: dict) -> np.ndarray:
    """GGUF's rope_freqs: the divisors of Llama 3.x rope scaling."""
    from torchchat.config import ModelConfig
    from torchchat.rope import llama3_rope_factors

    config = ModelConfig.from_hf(cfg)
    assert config.rope_scaling is not None
    return llama3_rope_factors(config.rope_scaling, config).numpy().astype(np.float32)


def write_q4_k_m(cfg: dict, tokenizer_gguf: Path, out: Path) -> None:
    """`cfg` is a Llama transformers config.json (real_files.SHAPES)."""
    import gguf

    if cfg["model_type"] != "llama":
        raise ValueError("direct Q4_K_M files are written for Llama shapes only")
    d, h, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    vocab = cfg["vocab_size"]
    tied = bool(cfg["tie_word_embeddings"])
    types = q4_k_m_types(n, tied)
    # (out features, in features) of each quantized tensor, llama.cpp's names.
    shapes = {"token_embd.weight": (vocab, d)}
    if not tied:
        shapes["output.weight"] = (vocab, d)
    for i in range(n):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_q.weight": (q, d),
                p + "attn_k.weight": (kv, d),
                p + "attn_v.weight": (kv, d),
                p + "attn_output.weight": (d, q),
                p + "ffn_gate.weight": (h, d),
                p + "ffn_up.weight": (h, d),
                p + "ffn_down.weight": (d, h),
            }
        )
    norms = ["output_norm.weight"] + [
        f"blk.{i}.{part}.weight" for i in range(n) for part in ("attn_norm", "ffn_norm")
    ]
    rope = _llama3_rope_freqs(cfg)

    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_block_count(n)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_feed_forward_length(h)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hd)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), vtype, sub)

    w.add_tensor_info("rope_freqs.weight", rope.shape, np.dtype(np.float32), rope.nbytes)
    for name in norms:
        w.add_tensor_info(name, (d,), np.dtype(np.float32), d * 4)
    for name, (rows, cols) in shapes.items():
        kind = types[name]
        per_row = cols // 256 * (_Q4_K_BLOCK if kind == "Q4_K" else _Q6_K_BLOCK)
        w.add_tensor_info(
            name,
            (rows, per_row),
            np.dtype(np.uint8),
            rows * per_row,
            raw_dtype=gguf.GGMLQuantizationType[kind],
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.write_tensor_data(rope)
    ones = np.ones(d, dtype=np.float32)
    for _ in norms:
        w.write_tensor_data(ones)
    rng = np.random.default_rng(0)
    for name, (rows, cols) in shapes.items():
        w.write_tensor_data(_blocks(rows, cols, types[name], rng))
    w.close()
    os.replace(tmp, out)
