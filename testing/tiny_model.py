"""A tiny random-weight Llama checkpoint with a real tokenizer, for tests.

Written in Meta's format (params.json + consolidated.00.pth) so it goes
through torchchat's own checkpoint loader, with a byte-level BPE
tokenizer.json trained on a few sentences, which ExecuTorch's C++ HF
tokenizer can read. Its alphabet is ASCII only: every token then decodes to
whole characters, which ExecuTorch's Python TextLLMRunner needs (its
token_callback raises UnicodeDecodeError on a partial UTF-8 character).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

BOS, EOS = "<s>", "</s>"
VOCAB = 320
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, my name is Tiny and I export language models.",
    "ExecuTorch runs programs; AOTInductor compiles packages.",
    "Pack my box with five dozen liquor jugs! 0123456789",
    "Sphinx of black quartz, judge my vow? (yes) [no] {maybe}",
    "A tokenizer splits text into pieces; a model predicts the next one.",
    "Greedy decoding picks the most likely token at every step, then stops.",
] * 20


def _ascii_byte_level_alphabet():
    """The ByteLevel pre-tokenizer's characters for bytes 0..127.

    ByteLevel shows printable bytes as themselves and the rest as
    chr(256 + n), n counting the non-printable bytes in order.
    """
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    )
    out, n = [], 0
    for b in range(256):
        ch = chr(b) if b in printable else chr(256 + n)
        if b not in printable:
            n += 1
        if b < 128:
            out.append(ch)
    return out


def write_tokenizer(d: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS, EOS],
        initial_alphabet=_ascii_byte_level_alphabet(),
        limit_alphabet=128,
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    if tok.get_vocab_size() != VOCAB:
        raise RuntimeError(f"tiny tokenizer has {tok.get_vocab_size()} tokens, want {VOCAB}")
    path = d / "tokenizer.json"
    tok.save(str(path))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": BOS,
                "eos_token": EOS,
                "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}",
            }
        )
    )
    return path


def write_checkpoint(
    d: os.PathLike[str] | str,
    seed: int = 0,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    hidden: int = 128,
    max_seq_len: int = 256,
) -> Path:
    """Writes the checkpoint directory `d` and returns it."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    write_tokenizer(d)
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int, scale: float = 0.15) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    hd = dim // n_heads
    sd = {
        "tok_embeddings.weight": w(VOCAB, dim, scale=1.0),
        "norm.weight": 1 + w(dim, scale=0.1),
        "output.weight": w(VOCAB, dim, scale=0.3),
    }
    for i in range(n_layers):
        p = f"layers.{i}."
        sd[p + "attention_norm.weight"] = 1 + w(dim, scale=0.1)
        sd[p + "ffn_norm.weight"] = 1 + w(dim, scale=0.1)
        sd[p + "attention.wq.weight"] = w(n_heads * hd, dim)
        sd[p + "attention.wk.weight"] = w(n_kv_heads * hd, dim)
        sd[p + "attention.wv.weight"] = w(n_kv_heads * hd, dim)
        sd[p + "attention.wo.weight"] = w(dim, n_heads * hd)
        sd[p + "feed_forward.w1.weight"] = w(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = w(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = w(hidden, dim)
    torch.save(sd, d / "consolidated.00.pth")
    (d / "params.json").write_text(
        json.dumps(
            {
                "dim": dim,
                "n_layers": n_layers,
                "n_heads": n_heads,
                "n_kv_heads": n_kv_heads,
                "norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "max_seq_len": max_seq_len,
            }
        )
    )
    return d


# Meta weight names -> GGUF tensor names (llama.cpp's llama architecture).
_GGUF_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_GGUF_LAYER_NAMES = {
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
}


def gguf_name(meta_name: str) -> str:
    """The GGUF tensor name of a Meta weight name ("layers.0.attention.wq.weight")."""
    if meta_name.startswith("layers."):
        i, rest = meta_name.split(".", 2)[1:]
        return f"blk.{i}.{_GGUF_LAYER_NAMES[rest]}"
    return _GGUF_NAMES[meta_name]


def write_gguf(
    ckpt: os.PathLike[str] | str,
    path: os.PathLike[str] | str,
    linears: tuple = ("Q4_0", "Q4_1"),
    embedding: str = "Q8_0",
    output: str = "Q8_0",
) -> Path:
    """The checkpoint written by write_checkpoint as a llama GGUF, quantized as
    llama.cpp's own files are: layer i's linears in linears[i % len(linears)]
    (so Q4_0 and Q4_1 both appear), the embedding and output in their types,
    norms in F32. Meta's rotary layout is GGUF's, so weights go in as they
    are. No tokenizer inside: pass the checkpoint's tokenizer.json."""
    import gguf
    import numpy as np

    ckpt, path = Path(ckpt), Path(path)
    params = json.loads((ckpt / "params.json").read_text())
    sd = torch.load(ckpt / "consolidated.00.pth", weights_only=True)
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(params["n_layers"])
    w.add_embedding_length(params["dim"])
    w.add_feed_forward_length(hidden)
    w.add_head_count(params["n_heads"])
    w.add_head_count_kv(params["n_kv_heads"])
    w.add_context_length(params["max_seq_len"])
    w.add_rope_freq_base(params["rope_theta"])
    w.add_layer_norm_rms_eps(params["norm_eps"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    T = gguf.GGMLQuantizationType
    for k, v in sd.items():
        arr = v.numpy().astype(np.float32)
        name = gguf_name(k)
        if k.startswith("layers."):
            qtype = linears[int(k.split(".")[1]) % len(linears)]
        else:
            qtype = {"tok_embeddings.weight": embedding, "output.weight": output}.get(k, "F32")
        if arr.ndim == 1 or qtype == "F32":
            w.add_tensor(name, arr)
        else:
            q = gguf.quants.quantize(arr, T[qtype])
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=T[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
