"""A .pt2 for a checkpoint with a vision tower (Gemma 3 or SmolVLM): one
package with two models,

- `model`: `forward(tokens[1, T], input_pos[T], embeds[1, T, dim],
  is_image[1]) -> logits`. With is_image 0 it is the text model (embeds
  unused: zeros); with is_image 1 the chunk's rows take `embeds` instead of
  the token embeddings and the chunk's block of the causal mask opens both
  ways, so one image's soft tokens attend to one another (transformers'
  Gemma 3 mask, torchchat.model.Model.image_blocks in eager); SmolVLM's
  tiles attend causally, so there is_image only picks `embeds`. Text and
  images go through this one graph because two compiled models in a package
  own their constants, the KV cache among them, and cannot share it.
- `vision_encoder`: `export.vision_pte.PixelsEncoder`, uint8 pixels
  [1, 3, S, S] -> embeds [1, image_tokens, dim], as in the .pte.

The metadata adds `inputs` (the calling convention aoti_run, the C API and
torchchat.artifacts read), `dim`, `image_size`, `image_tokens`, `boi_id`,
`eoi_id`, `image_id` and `resample`; SmolVLM's also `longest_edge`, `split`,
`patch_size` and `scale_factor`. Only vision checkpoints get it: text
packages keep forward(tokens, input_pos) and their compile cost.
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

    def __init__(self, model: Model, bidirectional: bool = True):
        super().__init__()
        self.model = model
        self.max_seq_length = model.max_seq_length
        self._flag: list[Tensor] = []
        # SmolVLM's images attend causally: is_image only picks the embeds.
        for layer in model.transformer.layers if bidirectional else ():
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
    """Whether `source` exports as a vision package: Gemma 3's or SmolVLM's
    tower, one sequence, last logits. Others (a server's --slots package,
    --full-logits for eval) export the text model alone, as before: their
    runners take ids only."""
    from torchchat.vision import VisionConfig
    from torchchat.vision_smolvlm import SmolVLMConfig

    one = not (native or full_logits or slots)
    return one and isinstance(source.ckpt.vision, VisionConfig | SmolVLMConfig)


def metadata(source: Source) -> dict[str, str]:
    """The package metadata a vision .pt2 adds (all strings): the .pte's
    constants (export.vision_pte.vision_metadata) under shorter names."""
    from export import vision_pte
    from torchchat.artifacts import PT2_VISION_INPUTS
    from torchchat.vision_smolvlm import SmolVLMConfig

    c = source.ckpt.vision
    assert c is not None  # wanted() said so
    v = vision_pte.vision_metadata(source)
    out = {
        "inputs": PT2_VISION_INPUTS,
        "dim": str(source.config.dim),
        "image_size": str(v["get_image_size"]),
        "image_tokens": str(v["get_image_tokens"]),
        "boi_id": str(v["get_boi_token_id"]),
        "eoi_id": str(v["get_eoi_token_id"]),
        "image_id": str(v["get_image_token_id"]),
        # The processor's resampling filter (PIL's): torchchat's Python
        # resizes with it, and aoti_run replays it for SmolVLM's tiles.
        "resample": str(c.resample),
    }
    if isinstance(c, SmolVLMConfig):
        # SmolVLM's tiling, and what torchchat's Python rebuilds its
        # layout from (torchchat.artifacts.Pt2Model.vision).
        out.update(
            longest_edge=str(c.longest_edge),
            split=str(int(c.split)),
            patch_size=str(c.patch_size),
            scale_factor=str(c.scale_factor),
        )
    return out


def encoder(source: Source) -> tuple[nn.Module, Tensor]:
    """The package's vision_encoder (the .pte's) and an example input."""
    from export.vision_pte import pixels_encoder

    return pixels_encoder(source)
