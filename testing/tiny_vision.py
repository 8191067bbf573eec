"""A tiny random Gemma 3 with a vision tower (Gemma3ForConditionalGeneration),
saved as HF safetensors with a real tokenizer, a Gemma-like chat template
that places images as content parts, and its image processor's config."""

from __future__ import annotations

import json
from pathlib import Path

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
    from tokenizers import AddedToken, Tokenizer

    d = Path(d)
    hf_gemma3_vision(seed).save_pretrained(d)
    write_tokenizer(d)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in (BOI, EOI, SOFT)])
    if [tok.token_to_id(t) for t in (BOI, EOI, SOFT)] != [BOI_ID, EOI_ID, IMAGE_ID]:
        raise RuntimeError("the tiny tokenizer's image tokens moved")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "chat_template": TEMPLATE})
    )
    processor(d)
    return d
