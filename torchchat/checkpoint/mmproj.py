"""llama.cpp's `mmproj` GGUF: a vision tower and projector beside a text
GGUF (llama.cpp's `--mmproj`). Gemma 3's (projector type `gemma3`) is read
into torchchat.vision's VisionEncoder, SmolVLM's (`idefics3`) into
torchchat.vision_smolvlm's SmolVLMEncoder; any other is refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchchat.checkpoint.base import CheckpointError
from torchchat.vision import VisionConfig
from torchchat.vision_smolvlm import SmolVLMConfig

# llama.cpp's names (gguf-py's MODEL_TENSOR.V_*) -> VisionEncoder's.
_TOP = {
    "v.patch_embd.weight": "patch_embedding.weight",
    "v.patch_embd.bias": "patch_embedding.bias",
    "v.position_embd.weight": "position_embedding.weight",
    "v.post_ln.weight": "post_layernorm.weight",
    "v.post_ln.bias": "post_layernorm.bias",
    "mm.input_projection.weight": "mm_input_projection",
    "mm.soft_emb_norm.weight": "mm_soft_emb_norm",
    "mm.model.fc.weight": "proj.weight",  # SmolVLM's connector
}
_BLOCK = {
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_out": "out_proj",
    "ln1": "layer_norm1",
    "ln2": "layer_norm2",
    "ffn_up": "fc1",
    "ffn_down": "fc2",
}
# llama.cpp's Gemma 3 pooling when the file names none (896 / 14 / 16).
_DEFAULT_SCALE = 4


def _name(name: str) -> str | None:
    if name in _TOP:
        return _TOP[name]
    parts = name.split(".")
    if len(parts) == 5 and parts[0] == "v" and parts[1] == "blk" and parts[3] in _BLOCK:
        return f"layers.{parts[2]}.{_BLOCK[parts[3]]}.{parts[4]}"
    return None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    if f is None:
        return default
    return f.contents()


def _rgb(reader: Any, key: str, path: Path) -> tuple[float, float, float]:
    values = [float(x) for x in _field(reader, key, [0.5] * 3)]
    if len(values) != 3:
        raise CheckpointError(f"{path}: {key} has {len(values)} values, not 3 (R, G, B)")
    return values[0], values[1], values[2]


def _open(path: Path) -> tuple[Any, str]:
    """The file's reader and projector type."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    kind = _field(reader, "clip.vision.projector_type") or _field(reader, "clip.projector_type")
    if arch != "clip" or not _field(reader, "clip.has_vision_encoder", False):
        raise CheckpointError(f"{path}: not an mmproj GGUF with a vision encoder")
    if kind not in ("gemma3", "idefics3"):
        raise CheckpointError(
            f"{path}: mmproj projector type {kind!r} is not supported "
            "(Gemma 3's gemma3 and SmolVLM's idefics3 are)"
        )
    return reader, str(kind)


def projector_type(path: Path) -> str:
    """The projector type of an mmproj GGUF we read: gemma3 or idefics3."""
    return _open(path)[1]


def _weights(reader: Any, path: Path) -> dict[str, torch.Tensor]:
    import gguf

    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        ours = _name(t.name)
        if ours is None:
            raise CheckpointError(f"{path}: tensor {t.name!r} has no place in the vision tower")
        shape = tuple(int(n) for n in reversed(t.shape))
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        w = torch.from_numpy(np.asarray(data, dtype=np.float32).reshape(shape).copy())
        # llama.cpp's converter stores Gemma's (1 + w) norm weight as 1 + w.
        weights[ours] = w - 1.0 if ours == "mm_soft_emb_norm" else w
    return weights


def _check_width(reader: Any, path: Path, text_dim: int) -> None:
    proj = int(_field(reader, "clip.vision.projection_dim", text_dim))
    if proj != text_dim:
        raise CheckpointError(
            f"{path}: its projector gives width {proj}, the text model's is {text_dim}"
        )


def load_mmproj_smolvlm(
    path: Path, text_dim: int, image_id: int
) -> tuple[SmolVLMConfig, dict[str, torch.Tensor]]:
    """(SmolVLMConfig, SmolVLMEncoder weights) from a SmolVLM mmproj GGUF
    (projector type idefics3); `image_id` is the text tokenizer's <image>.
    The processor's longest edge is the file's preproc_image_size; image
    splitting is on, as in SmolVLM's processor."""
    reader, kind = _open(path)
    if kind != "idefics3":
        raise CheckpointError(f"{path}: projector type {kind!r}, not SmolVLM's idefics3")
    _check_width(reader, path, text_dim)
    image_size = int(_field(reader, "clip.vision.image_size"))
    config = SmolVLMConfig(
        hidden=int(_field(reader, "clip.vision.embedding_length")),
        intermediate=int(_field(reader, "clip.vision.feed_forward_length")),
        layers=int(_field(reader, "clip.vision.block_count")),
        heads=int(_field(reader, "clip.vision.attention.head_count")),
        image_size=image_size,
        patch_size=int(_field(reader, "clip.vision.patch_size")),
        eps=float(_field(reader, "clip.vision.attention.layer_norm_epsilon", 1e-6)),
        text_dim=text_dim,
        scale_factor=int(_field(reader, "clip.vision.projector.scale_factor", 2)),
        image_id=image_id,
        longest_edge=int(_field(reader, "clip.vision.preproc_image_size", 4 * image_size)),
        mean=_rgb(reader, "clip.vision.image_mean", path),
        std=_rgb(reader, "clip.vision.image_std", path),
    )
    return config, _weights(reader, path)


def load_mmproj(path: Path, text_dim: int, ids: tuple[int, int, int]) -> tuple[VisionConfig, dict]:
    """(VisionConfig, VisionEncoder weights) from an mmproj GGUF whose
    projector feeds a text model of width `text_dim`; `ids` are the text
    tokenizer's (begin-of-image, end-of-image, soft token) ids."""
    reader, kind = _open(path)
    if kind != "gemma3":
        raise CheckpointError(f"{path}: projector type {kind!r}, not Gemma 3's gemma3")
    image_size = int(_field(reader, "clip.vision.image_size"))
    patch = int(_field(reader, "clip.vision.patch_size"))
    scale = int(_field(reader, "clip.vision.projector.scale_factor", _DEFAULT_SCALE))
    _check_width(reader, path, text_dim)
    side = image_size // patch // scale
    config = VisionConfig(
        hidden=int(_field(reader, "clip.vision.embedding_length")),
        intermediate=int(_field(reader, "clip.vision.feed_forward_length")),
        layers=int(_field(reader, "clip.vision.block_count")),
        heads=int(_field(reader, "clip.vision.attention.head_count")),
        image_size=image_size,
        patch_size=patch,
        eps=float(_field(reader, "clip.vision.attention.layer_norm_epsilon", 1e-6)),
        text_dim=text_dim,
        mm_tokens=side * side,
        boi_id=ids[0],
        eoi_id=ids[1],
        image_id=ids[2],
        mean=_rgb(reader, "clip.vision.image_mean", path),
        std=_rgb(reader, "clip.vision.image_std", path),
    )
    return config, _weights(reader, path)
