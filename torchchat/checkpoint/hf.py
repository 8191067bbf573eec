"""HF checkpoints: config.json and safetensors shards, in Meta names and
RoPE layout (Gemma 3's multimodal checkpoints: the text model)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from torchchat.architectures import architecture
from torchchat.checkpoint.base import (
    Checkpoint,
    CheckpointError,
    Stage,
    find_tokenizer,
    in_stage,
    rotated,
    split_fused,
    to_meta_rope,
)
from torchchat.config import ModelConfig
from torchchat.vision import VisionConfig, vision_tensor_name
from torchchat.vision_smolvlm import MODEL_TYPES as SMOLVLM_TYPES
from torchchat.vision_smolvlm import SmolVLMConfig
from torchchat.vision_smolvlm import tensor_name as smolvlm_tensor_name

_HF_LAYER = {
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_norm.weight": "attention.q_norm_fn.weight",
    "self_attn.k_norm.weight": "attention.k_norm_fn.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}
_HF_TOP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


# Gemma 2/3 name their norms after the position, not the role:
# post_attention_layernorm follows attention (Llama's precedes the MLP).
_HF_GEMMA_LAYER = {
    **_HF_LAYER,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffn_norm.weight",
}


def hf_tensor_name(name: str, post_norms: bool = False) -> str | None:
    if name in _HF_TOP:
        return _HF_TOP[name]
    layer = _HF_GEMMA_LAYER if post_norms else _HF_LAYER
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in layer:
        return f"layers.{m.group(1)}.{layer[m.group(2)]}"
    return None


# Gemma 3 4B and up (Gemma3ForConditionalGeneration): the language model's
# weights under these prefixes, beside the vision tower (torchchat.vision).
_GEMMA3_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
_GEMMA3_VISION = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def _gemma3_text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The text model's config.json: its `text_config` holds only what
    differs from Gemma3TextConfig's defaults, which transformers fills in."""
    import transformers

    text = transformers.Gemma3TextConfig(**cfg["text_config"]).to_dict()
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id"):
        if key in cfg:
            text[key] = cfg[key]
    text["model_type"] = "gemma3_text"
    return text


def _gemma3_text_name(name: str) -> str | None:
    """A multimodal Gemma 3 tensor's name in the text model, or None for
    the vision tower and projector."""
    if name.startswith(_GEMMA3_VISION):
        return None
    for p in _GEMMA3_TEXT_PREFIXES:
        if name.startswith(p):
            return "model." + name[len(p) :]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model.") :]
    return name


def _smolvlm_text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """SmolVLM/Idefics3's text model's config.json (a Llama's): its
    `text_config` may hold only what differs from the defaults, which
    transformers fills in."""
    import transformers

    kind = transformers.SmolVLMConfig if cfg["model_type"] == "smolvlm" else None
    full = (kind or transformers.Idefics3Config)(**cfg)
    assert isinstance(full.text_config, transformers.PretrainedConfig)  # filled in by __init__
    text: dict[str, Any] = full.text_config.to_dict()
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id"):
        if key in cfg:
            text.setdefault(key, cfg[key])
    return text


def _smolvlm_text_name(name: str) -> str | None:
    """A SmolVLM tensor's name in the text model, or None for the vision
    tower and connector."""
    if name.startswith("model.text_model."):
        return "model." + name[len("model.text_model.") :]
    if name.startswith(("model.vision_model.", "model.connector.")):
        return None
    return name


def _tensors(
    path: Path, keep: Callable[[str], bool] = lambda name: True
) -> Iterator[tuple[str, torch.Tensor]]:
    """A safetensors file's tensors whose names `keep` keeps; the others
    are never read."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if keep(name):
                yield name, f.get_tensor(name)


def load_hf(d: Path, stage: Stage | None = None) -> Checkpoint:
    """An HF checkpoint; with `stage`, only the tensors of that pipeline
    stage are read (in_stage)."""
    cfg = json.loads((d / "config.json").read_text())
    multimodal = cfg.get("model_type") == "gemma3" and "text_config" in cfg
    smolvlm = cfg.get("model_type") in SMOLVLM_TYPES
    vision: VisionConfig | SmolVLMConfig | None = None
    try:
        if multimodal:
            vision = VisionConfig.from_hf(cfg, d)
            cfg = _gemma3_text_config(cfg)
        elif smolvlm:
            vision = SmolVLMConfig.from_hf(cfg, d)
            cfg = _smolvlm_text_config(cfg)
    except ValueError as e:
        raise CheckpointError(f"{d}: {e}") from None
    config = ModelConfig.from_hf(cfg)
    fused = architecture(config.architecture).hf_fused
    layers = None if stage is None else stage(config.n_layers)
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(f.name for f in d.glob("*.safetensors"))
    missing = [f for f in files if not (d / f).exists()]
    if missing:
        raise CheckpointError(f"{d}: missing shard(s) {', '.join(missing)}")

    def text_name(name: str) -> str | None:
        if smolvlm:
            return _smolvlm_text_name(name)
        return _gemma3_text_name(name) if multimodal else name

    def keep(name: str) -> bool:
        """Whether a pipeline stage holding `layers` reads the tensor."""
        text = text_name(name)
        if layers is None or text is None:
            return layers is None
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", text)
        if m:
            return int(m.group(1)) in layers
        meta = hf_tensor_name(text, config.post_norms)
        return meta is None or in_stage(meta, config, layers)

    # The family's vision tensors (by prefix) and their names in its tower.
    tower: tuple[tuple[str, ...], Callable[[str], str | None]] | None = None
    if multimodal:
        tower = (_GEMMA3_VISION, vision_tensor_name)
    elif smolvlm:
        tower = (("model.vision_model.", "model.connector."), smolvlm_tensor_name)
    sd: dict[str, torch.Tensor] = {}
    vision_sd: dict[str, torch.Tensor] = {}
    for f in files:
        for name, w in _tensors(d / f, keep):
            if tower is not None and name.startswith(tower[0]):
                try:
                    vname = tower[1](name.removeprefix("model."))
                except ValueError as e:
                    raise CheckpointError(f"{d}: {e}") from None
                if vname is not None:
                    vision_sd[vname] = w
                continue
            text = text_name(name)
            if text is None:
                continue
            name = text
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
            if m and m.group(2) in fused:
                layer = f"layers.{m.group(1)}."
                for part, rows in split_fused(layer, m.group(2), w.shape[0], config).items():
                    piece = w[rows]
                    sd[part] = to_meta_rope(part, piece, config) if rotated(part) else piece
                continue
            meta = hf_tensor_name(name, config.post_norms)
            if meta is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                raise CheckpointError(f"HF tensor {name!r} has no place in the model")
            if rotated(meta):
                w = to_meta_rope(meta, w, config)
            sd[meta] = w
    tok_cfg = d / "tokenizer_config.json"
    template, add_bos = None, None
    if tok_cfg.exists():
        tc = json.loads(tok_cfg.read_text())
        template, add_bos = tc.get("chat_template"), tc.get("add_bos_token")
    if template is None and (d / "chat_template.jinja").exists():
        template = (d / "chat_template.jinja").read_text()
    if template is None and (d / "chat_template.json").exists():
        # A processor's template (SmolVLM's, Idefics3's), beside the tokenizer.
        template = json.loads((d / "chat_template.json").read_text()).get("chat_template")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return Checkpoint(
        config=config,
        path=d,
        format="hf",
        weights=sd,
        tokenizer_path=find_tokenizer(d),
        chat_template=template if isinstance(template, str) else None,
        bos_id=cfg.get("bos_token_id"),
        eos_ids=eos_ids,
        add_bos=add_bos,
        vision=vision if vision_sd else None,
        vision_weights=vision_sd,
        layers=layers,
    )
