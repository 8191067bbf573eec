"""A tiny random Gemma 3 with a vision tower (Gemma3ForConditionalGeneration),
saved as HF safetensors with a real tokenizer, a Gemma-like chat template
that places images as content parts, and its image processor's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from testing.tiny_model import BOS, EOS, VOCAB, write_tokenizer

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
BOI_ID, EOI_ID, IMAGE_ID = VOCAB, VOCAB + 1, VOCAB + 2
IMAGE_SIZE = 32
MM_TOKENS = 16
# Gemma 3's template's way with content parts: an image part is its
# begin-of-image marker, which the processor expands.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}" + BOI + "{% else %}"
    "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def hf_gemma3_vision(seed: int = 0) -> transformers.Gemma3ForConditionalGeneration:  # noqa: F821
    import transformers

    torch.manual_seed(seed)
    config = transformers.Gemma3Config(
        text_config=dict(
            vocab_size=VOCAB + 4,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=24,
            max_position_embeddings=512,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=4,
            vision_use_head=False,
        ),
        mm_tokens_per_image=MM_TOKENS,
        boi_token_index=BOI_ID,
        eoi_token_index=EOI_ID,
        image_token_index=IMAGE_ID,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    m = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            # Away from their initial values, so a wrong layout shows.
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
            if "mm_input_projection" in name:
                p.normal_(0, 0.5)
    return m


def processor(d: Path | None = None) -> transformers.Gemma3ImageProcessorPil:  # noqa: F821
    import transformers

    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    proc = transformers.Gemma3ImageProcessorPil(size=size)
    if d is not None:
        proc.save_pretrained(d)
    return proc


def write_gemma3_vision(d: Path, seed: int = 0) -> Path:
    """The checkpoint directory `d`: model, tokenizer, processor config."""
    d = Path(d)
    hf_gemma3_vision(seed).save_pretrained(d)
    write_image_tokenizer(d, {BOI: BOI_ID, EOI: EOI_ID, SOFT: IMAGE_ID})
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "chat_template": TEMPLATE})
    )
    processor(d)
    return d


def write_mmproj(d: Path, path: Path) -> Path:
    """The checkpoint's vision tower as llama.cpp's converter writes an
    mmproj GGUF for Gemma 3: gguf-py's names for the HF tensors, the
    projector's norm stored as 1 + w, its projection in F16, the patch and
    position embeddings in F32, and the clip.vision.* keys."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    cfg = json.loads((Path(d) / "config.json").read_text())
    v = cfg["vision_config"]
    w = clip_writer(path, cfg, gguf.VisionProjectorType.GEMMA3, eps=1e-6)
    w.add_vision_projector_scale_factor(v["image_size"] // v["patch_size"] // int(MM_TOKENS**0.5))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, v["num_hidden_layers"])
    for name, t in load_file(str(Path(d) / "model.safetensors")).items():
        if not name.startswith(("vision_tower.", "multi_modal_projector.")) or ".head." in name:
            continue
        # The names a Gemma 3 checkpoint on the Hub has.
        hf = name.replace("vision_tower.", "vision_tower.vision_model.").replace(
            "_weight", ".weight"
        )
        base, suffix = hf.rsplit(".", 1)
        data = t.float().numpy()
        if "soft_emb_norm" in hf:
            data = data + 1
        if "input_projection" in hf:
            data = data.astype(np.float16)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    finish(w)
    return path


def write_image_tokenizer(d: Path, special: dict[str, int]) -> None:
    """The tiny tokenizer in `d` with a family's image tokens added as
    special tokens at the ids its tests expect."""
    from tokenizers import AddedToken, Tokenizer

    write_tokenizer(d)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in special])
    if {t: tok.token_to_id(t) for t in special} != special:
        raise RuntimeError("the tiny tokenizer's image tokens moved")
    tok.save(str(d / "tokenizer.json"))


def clip_writer(path: Path, cfg: dict[str, Any], projector: str, eps: float) -> Any:
    """A gguf.GGUFWriter for an mmproj file with the clip.vision.* keys
    llama.cpp's converter writes for every projector, from the HF config;
    the caller adds its family's keys and tensors, then finish()es it."""
    import gguf

    v = cfg["vision_config"]
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(projector)
    w.add_vision_image_size(v["image_size"])
    w.add_vision_patch_size(v["patch_size"])
    w.add_vision_embedding_length(v["hidden_size"])
    w.add_vision_feed_forward_length(v["intermediate_size"])
    w.add_vision_block_count(v["num_hidden_layers"])
    w.add_vision_head_count(v["num_attention_heads"])
    w.add_vision_projection_dim(cfg["text_config"]["hidden_size"])
    w.add_vision_image_mean([0.5, 0.5, 0.5])
    w.add_vision_image_std([0.5, 0.5, 0.5])
    w.add_vision_attention_layernorm_eps(eps)
    w.add_vision_use_gelu(True)
    return w


def finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
