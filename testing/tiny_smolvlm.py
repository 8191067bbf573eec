"""A tiny random SmolVLM (SmolVLMForConditionalGeneration: SigLIP tiles,
a pixel-shuffle connector, a Llama text model), or the same as Idefics3
(Idefics3ForConditionalGeneration, which SmolVLM v1 checkpoints are),
saved as HF safetensors with a real tokenizer, SmolVLM's own chat template
and its processor's config (image splitting on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from testing.tiny_model import BOS, EOS, VOCAB
from testing.tiny_vision import clip_writer, finish, write_image_tokenizer

FAKE, GLOBAL, IMAGE, END = (
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    "<end_of_utterance>",
)
# The tile markers SmolVLM's tokenizer has: <row_1_col_1> .. <row_6_col_6>.
GRID = 6
TILES = [f"<row_{r}_col_{c}>" for r in range(1, GRID + 1) for c in range(1, GRID + 1)]
SPECIAL = [FAKE, GLOBAL, IMAGE, END, *TILES]
IMAGE_ID = VOCAB + 2
TILE = 32  # the vision tower's image size: one tile
LONGEST = 64  # the processor's longest edge: up to 2 x 2 tiles
PATCH = 4
SCALE = 2
SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2


def template() -> str:
    """SmolVLM's own chat template, as its processor defaults to it."""
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    return DEFAULT_CHAT_TEMPLATE


def hf_smolvlm(seed: int = 0, family: str = "smolvlm") -> transformers.PreTrainedModel:  # noqa: F821
    import transformers

    torch.manual_seed(seed)
    kind = transformers.SmolVLMConfig if family == "smolvlm" else transformers.Idefics3Config
    config = kind(
        text_config=dict(
            model_type="llama",
            vocab_size=VOCAB + len(SPECIAL),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=TILE,
            patch_size=PATCH,
        ),
        scale_factor=SCALE,
        image_token_id=IMAGE_ID,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = (
        transformers.SmolVLMForConditionalGeneration
        if family == "smolvlm"
        else transformers.Idefics3ForConditionalGeneration
    )
    m = model(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            # Away from their initial values, so a wrong layout shows.
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
            if "modality_projection" in name or "position_embedding" in name:
                p.normal_(0, 0.5)
    return m


def processor(d: Path | None = None, family: str = "smolvlm") -> Any:
    import transformers

    kind = (
        transformers.SmolVLMImageProcessorPil
        if family == "smolvlm"
        else transformers.Idefics3ImageProcessorPil
    )
    proc = kind(size={"longest_edge": LONGEST}, max_image_size={"longest_edge": TILE})
    if d is not None:
        proc.save_pretrained(d)
    return proc


def write_smolvlm(d: Path, seed: int = 0, family: str = "smolvlm") -> Path:
    """The checkpoint directory `d`: model, tokenizer, processor config;
    `family` "smolvlm" or "idefics3"."""
    d = Path(d)
    hf_smolvlm(seed, family).save_pretrained(d)
    write_image_tokenizer(d, {t: VOCAB + i for i, t in enumerate(SPECIAL)})
    tok_cfg = {"bos_token": BOS, "eos_token": EOS}
    if family == "smolvlm":
        tok_cfg["chat_template"] = template()
    else:
        # As SmolVLM-256M-Instruct ships it: the processor's chat_template.json.
        (d / "chat_template.json").write_text(json.dumps({"chat_template": template()}))
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    processor(d, family)
    (d / "processor_config.json").write_text(json.dumps({"image_seq_len": SEQ_LEN}))
    return d


def write_mmproj(d: Path, path: Path) -> Path:
    """The checkpoint's vision tower as llama.cpp's converter writes an
    mmproj GGUF for SmolVLM (projector type idefics3): gguf-py's names for
    the HF tensors, the embeddings and 1-D tensors in F32, the other
    matrices in F16, the processor's longest edge as preproc_image_size."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    cfg = json.loads((Path(d) / "config.json").read_text())
    v = cfg["vision_config"]
    w = clip_writer(path, cfg, gguf.VisionProjectorType.IDEFICS3, eps=v["layer_norm_eps"])
    w.add_vision_projector_scale_factor(cfg["scale_factor"])
    w.add_vision_preproc_image_size(LONGEST)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, v["num_hidden_layers"])
    for name, t in load_file(str(Path(d) / "model.safetensors")).items():
        if not name.startswith(("model.vision_model.", "model.connector.")):
            continue
        base, suffix = name.rsplit(".", 1)
        data = t.float().numpy()
        if data.ndim == 2 and ".embeddings." not in name:
            data = data.astype(np.float16)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    finish(w)
    return path
