"""A .pt2 for a checkpoint with a vision tower (Gemma 3): one package with
two models,

- `model`: `forward(tokens[1, T], input_pos[T], embeds[1, T, dim],
  is_image[1]) -> logits`. With is_image 0 it is the text model (embeds
  unused: zeros); with is_image 1 the chunk's rows take `embeds` instead of
  the token embeddings and the chunk's block of the causal mask opens both
  ways, so one image's soft tokens attend to one another (transformers'
  Gemma 3 mask, torchchat.model.Model.image_blocks in eager). Text and
  images go through this one graph because two compiled models in a package
  own their constants, the KV cache among them, and cannot share it.
- `vision_encoder`: `export.vision_pte.PixelsEncoder`, uint8 pixels
  [1, 3, S, S] -> embeds [1, image_tokens, dim], as in the .pte.

The metadata adds `inputs` (the calling convention aoti_run, the C API and
torchchat.artifacts read), `dim`, `image_size`, `image_tokens`, `boi_id`,
`eoi_id`, `image_id` and `resample`. Only vision checkpoints get it: text packages keep
forward(tokens, input_pos) and their compile cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from export.source import Source
    from torchchat.model import Model


class ImageChunkMask(nn.Module):
    """A layer's SDPA whose mask opens the chunk's block both ways while
    the forward's is_image (`flag[0]`) is set; else the mask as it is."""

    def __init__(self, inner: nn.Module, flag: list[Tensor]):
        super().__init__()
        self.inner = inner
        self.flag = flag  # ImageDecoder's, set for the length of its forward

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask):  # noqa: ANN001, ANN201 (ExecuTorch's SDPA signature)
        cols = torch.arange(mask.shape[-1], device=mask.device)
        chunk = (cols >= input_pos[0]) & (cols <= input_pos[-1]) & (self.flag[0] != 0)
        return self.inner(input_pos, q, k, v, bsz, seqlen, mask | chunk)


class ImageDecoder(nn.Module):
    """The text model with the vision package's calling convention
    (torchchat.artifacts.PT2_VISION_INPUTS)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        self.max_seq_length = model.max_seq_length
        self._flag: list[Tensor] = []
        for layer in model.transformer.layers:
            attn = layer.attention
            attn.SDPA = ImageChunkMask(attn.SDPA, self._flag)

    def forward(
        self, tokens: Tensor, input_pos: Tensor, embeds: Tensor, is_image: Tensor
    ) -> Tensor:
        t = self.model.transformer
        vocab = self.model.config.vocab_size
        h = t.tok_embeddings(torch.where(tokens < vocab, tokens, torch.zeros_like(tokens)))
        h = torch.where(is_image.view(1, 1, 1) != 0, embeds.to(h.dtype), h)
        self._flag[:] = [is_image]
        try:
            return t(None, {"input_pos": input_pos}, h)
        finally:
            self._flag.clear()


def wanted(source: Source, native: bool, full_logits: bool, slots: int) -> bool:
    """Whether `source` exports as a vision package: Gemma 3's tower, one
    sequence, last logits. Others (SmolVLM's tower, a server's --slots
    package, --full-logits for eval) export the text model alone, as
    before: their runners take ids only."""
    from torchchat.vision import VisionConfig

    one = not (native or full_logits or slots)
    return one and isinstance(source.ckpt.vision, VisionConfig)


def metadata(source: Source) -> dict[str, str]:
    """The package metadata a vision .pt2 adds (all strings)."""
    from export import vision_pte
    from torchchat.artifacts import PT2_VISION_INPUTS
    from torchchat.vision import VisionConfig

    c = source.ckpt.vision
    assert isinstance(c, VisionConfig)  # wanted() said so
    v = vision_pte.vision_metadata(source)
    return {
        "inputs": PT2_VISION_INPUTS,
        "dim": str(source.config.dim),
        "image_size": str(v["get_image_size"]),
        "image_tokens": str(v["get_image_tokens"]),
        "boi_id": str(v["get_boi_token_id"]),
        "eoi_id": str(v["get_eoi_token_id"]),
        "image_id": str(v["get_image_token_id"]),
        # The processor's resampling filter (PIL's), for torchchat's Python;
        # aoti_run takes images at the tower's size already.
        "resample": str(c.resample),
    }


def encoder(source: Source) -> tuple[nn.Module, Tensor]:
    """The package's vision_encoder (the .pte's) and an example input."""
    from export.vision_pte import PixelsEncoder
    from torchchat.vision import VisionConfig, build_encoder

    c = source.ckpt.vision
    assert isinstance(c, VisionConfig)  # check() refused the others
    tower = build_encoder(c, source.ckpt.vision_weights)
    pixels = torch.zeros(1, 3, c.image_size, c.image_size, dtype=torch.uint8)
    return PixelsEncoder(tower, source.config.embedding_scale).eval(), pixels
