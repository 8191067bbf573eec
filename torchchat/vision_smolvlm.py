"""Images in, the second family: SmolVLM (and Idefics3, its parent).

Its processor resizes an image, splits it into tiles of the vision
tower's size (rows x cols, plus the whole image shrunk to one tile), and
its prompt writes each tile as `<fake_token_around_image><row_r_col_c>`
followed by `image_seq_len` soft tokens. Each tile goes through SigLIP,
then a pixel shuffle (each s x s block of patches into one token) and a
linear map into the Llama text model, which attends causally as usual.
The span code (ImageSpan, the cache of embeddings, Slot.reuse) is shared
with Gemma 3 (torchchat.vision): here an image fills several runs of
soft tokens, one per tile.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchchat.vision import ImageError, ImageSpan, ImageTower, SiglipLayer, load_tower

if TYPE_CHECKING:
    from PIL import Image

    from torchchat.tokenizer import Tokenizer

# model_type values of the checkpoints this module reads.
MODEL_TYPES = ("smolvlm", "idefics3")
FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
# The processor's upper bound on a resized image's side.
MAX_SIDE = 4096


@dataclass(frozen=True)
class SmolVLMConfig:
    """The vision tower, the connector and the image processor."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int  # one tile's side, the tower's input
    patch_size: int
    eps: float
    text_dim: int
    scale_factor: int
    image_id: int
    # The processor: the longest side an image is first resized to, and
    # whether it is then split into tiles (else it is one tile, squashed).
    longest_edge: int
    split: bool = True
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = 1  # transformers' PILImageResampling: 1 is Lanczos

    @property
    def seq_len(self) -> int:
        """Soft tokens per tile."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], d: Path | None = None) -> SmolVLMConfig:
        """From a SmolVLM/Idefics3ForConditionalGeneration config.json and
        the directory's preprocessor_config.json, when there is one."""
        v = cfg.get("vision_config") or {}
        t = cfg.get("text_config") or {}
        image_size = int(v.get("image_size", 224))
        extra: dict[str, Any] = {}
        longest = 4 * image_size
        pre = d / "preprocessor_config.json" if d is not None else None
        if pre is not None and pre.exists():
            p = json.loads(pre.read_text())
            tile = (p.get("max_image_size") or {}).get("longest_edge", image_size)
            if tile != image_size:
                raise ValueError(
                    f"preprocessor max_image_size {tile} differs from the vision tower's {image_size}"
                )
            longest = int((p.get("size") or {}).get("longest_edge", longest))
            extra = {
                "split": bool(p.get("do_image_splitting", True)),
                "rescale": float(p.get("rescale_factor", 1 / 255)),
                "mean": tuple(p.get("image_mean", (0.5, 0.5, 0.5))),
                "std": tuple(p.get("image_std", (0.5, 0.5, 0.5))),
                "resample": int(p.get("resample", 1)),
            }
        act = v.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ("gelu_pytorch_tanh", "gelu_new"):
            raise ValueError(f"vision hidden_act {act!r} is not supported (gelu_pytorch_tanh is)")
        image_id = cfg.get("image_token_id")
        if image_id is None:
            raise ValueError("config.json has no image_token_id")
        c = cls(
            hidden=int(v.get("hidden_size", 1152)),
            intermediate=int(v.get("intermediate_size", 3072)),
            layers=int(v.get("num_hidden_layers", 12)),
            heads=int(v.get("num_attention_heads", 16)),
            image_size=image_size,
            patch_size=int(v.get("patch_size", 32)),
            eps=float(v.get("layer_norm_eps", 1e-6)),
            text_dim=int(t.get("hidden_size", 4096)),
            scale_factor=int(cfg.get("scale_factor", 2)),
            image_id=int(image_id),
            longest_edge=longest,
            **extra,
        )
        side = c.image_size // c.patch_size
        if side % c.scale_factor:
            raise ValueError(f"scale_factor {c.scale_factor} does not divide {side} patches")
        return c


# --- preprocessing -------------------------------------------------------------


def _fit_longest(w: int, h: int, longest: int) -> tuple[int, int]:
    """The processor's first resize: the longest side to `longest`, the
    other kept in proportion (rounded down, then up to even), then both
    below MAX_SIDE."""
    ratio = w / h
    if w >= h:
        w = longest
        h = int(w / ratio)
        h += h % 2
    else:
        h = longest
        w = int(h * ratio)
        w += w % 2
    w, h = max(w, 1), max(h, 1)
    ratio = w / h
    if w >= h and w > MAX_SIDE:
        w, h = MAX_SIDE, int(MAX_SIDE / ratio)
    elif h > w and h > MAX_SIDE:
        h, w = MAX_SIDE, int(MAX_SIDE * ratio)
    return max(w, 1), max(h, 1)


def _tile_multiple(w: int, h: int, tile: int) -> tuple[int, int]:
    """The second resize: both sides up to whole tiles, the shorter one
    from the longer one's rounded size (as the processor computes it)."""
    ratio = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / ratio) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * ratio) / tile) * tile
    return w, h


def grid(size: tuple[int, int], c: SmolVLMConfig) -> tuple[int, int]:
    """(rows, cols) of tiles an image of `size` (width, height) splits
    into; (0, 0) when it stays one tile."""
    if not c.split:
        return 0, 0
    w, h = _tile_multiple(*_fit_longest(*size, c.longest_edge), c.image_size)
    if w > c.image_size or h > c.image_size:
        return h // c.image_size, w // c.image_size
    return 0, 0


def tile_pixels(img: Image.Image, c: SmolVLMConfig) -> Tensor:
    """The image's tiles as uint8 [rows * cols + 1, 3, S, S], resized and
    cut as the processor does: row by row, then the whole image; or one
    tile [1, 3, S, S]. (runner/common/image.cc's TileImage does the same
    in C++, to the byte.)"""
    import numpy as np

    img = img.convert("RGB")
    s = c.image_size
    img = img.resize(_fit_longest(*img.size, c.longest_edge), resample=c.resample)
    if c.split:
        img = img.resize(_tile_multiple(*img.size, s), resample=c.resample)
    tiles = []
    if c.split and (img.width > s or img.height > s):
        for top in range(0, img.height - s + 1, s):
            for left in range(0, img.width - s + 1, s):
                tiles.append(img.crop((left, top, left + s, top + s)))
    tiles.append(img.resize((s, s), resample=c.resample))
    x = torch.from_numpy(np.stack([np.asarray(t, dtype=np.uint8) for t in tiles]))
    return x.permute(0, 3, 1, 2).contiguous()


def preprocess(img: Image.Image, c: SmolVLMConfig) -> Tensor:
    """The image's tiles [rows * cols + 1, 3, S, S] as the processor makes
    them (tile_pixels), rescaled and normalised."""
    x = tile_pixels(img, c).to(torch.float32) * c.rescale
    mean = torch.tensor(c.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(c.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def placeholder(size: tuple[int, int], c: SmolVLMConfig, image: str = IMAGE) -> str:
    """The text an image's marker expands to, as SmolVLM's processor writes it."""
    run = image * c.seq_len
    rows, cols = grid(size, c)
    whole = f"{FAKE}{GLOBAL}{run}{FAKE}"
    if rows == 0:
        return whole
    lines = "".join(
        "".join(f"{FAKE}<row_{r + 1}_col_{k + 1}>{run}" for k in range(cols)) + "\n"
        for r in range(rows)
    )
    return f"{lines}\n{whole}"


# --- the tower and connector -----------------------------------------------------


class SmolVLMEncoder(nn.Module):
    """tiles [B, 3, S, S] -> soft tokens [B, seq_len, text_dim]: SigLIP's
    patches and encoder, a pixel shuffle, the connector's linear map."""

    def __init__(self, c: SmolVLMConfig):
        super().__init__()
        self.config = c
        side = c.image_size // c.patch_size
        self.side = side
        self.patch_embedding = nn.Conv2d(3, c.hidden, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(side * side, c.hidden)
        self.layers = nn.ModuleList(SiglipLayer(c) for _ in range(c.layers))
        self.post_layernorm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.proj = nn.Linear(c.hidden * c.scale_factor**2, c.text_dim, bias=False)
        # A whole tile's patch positions, bucketed by fractional coordinate
        # in float32 as the NaViT-style embedding computes them: a rounding
        # there can move a patch to its neighbour's position.
        frac = (torch.arange(side, dtype=torch.float32) * (1.0 / side)).clamp(max=1.0 - 1e-6)
        bounds = torch.arange(1 / side, 1.0, 1 / side)
        b = torch.bucketize(frac, bounds, right=True)
        self.register_buffer("positions", (b[:, None] * side + b[None, :]).reshape(-1), False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.position_embedding(self.positions)
        for layer in self.layers:
            x = layer(x)
        x = self.post_layernorm(x)
        # Each s x s block of patches becomes one token: its s rows of s
        # patches' features side by side.
        b, _, d = x.shape
        s, n = self.config.scale_factor, self.side // self.config.scale_factor
        x = x.view(b, n, s, n, s, d).permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, s * s * d)
        return self.proj(x)


def tensor_name(name: str) -> str | None:
    """A checkpoint's vision or connector tensor name (after `model.`) in
    SmolVLMEncoder; None for a text model's."""
    if name.startswith("connector.modality_projection.proj."):
        return "proj." + name.rsplit(".", 1)[1]
    if not name.startswith("vision_model."):
        return None
    rest = name[len("vision_model.") :]
    if rest.startswith("embeddings."):
        return rest[len("embeddings.") :]
    if rest.startswith("post_layernorm."):
        return rest
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(self_attn\.|mlp\.)?(\w+)\.(weight|bias)", rest)
    if m and m.group(3) in _LAYER_PARTS:
        return f"layers.{m.group(1)}.{m.group(3)}.{m.group(4)}"
    raise ValueError(f"vision tensor {name!r} has no place in the vision tower")


_LAYER_PARTS = (
    "layer_norm1",
    "layer_norm2",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "fc1",
    "fc2",
)


def build_encoder(
    config: SmolVLMConfig, weights: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> SmolVLMEncoder:
    return load_tower(SmolVLMEncoder(config), weights, dtype)


# --- prompts -------------------------------------------------------------------------


class SmolVLMVision(ImageTower):
    """The ImageTower (torchchat.vision) of SmolVLM: an image is its tiles'
    embeddings, [tiles * seq_len, text_dim], one run of soft tokens per tile."""

    def __init__(self, encoder: SmolVLMEncoder):
        super().__init__()
        self.encoder = self.tower = encoder
        self.smol = encoder.config

    def pixels(self, img: Image.Image) -> Tensor:
        return preprocess(img, self.smol)

    def encode(self, pixels: list[Tensor]) -> list[Tensor]:
        counts = [p.shape[0] for p in pixels]
        out = self.tower(torch.cat(pixels).to(self.tower.proj.weight.dtype))
        return [t.reshape(-1, t.shape[-1]) for t in out.split(counts)]

    def with_markers(self, text: str, n: int, tokenizer: Tokenizer) -> str:
        marker = tokenizer.token_text(self.smol.image_id)
        have = text.count(marker)
        if have == 0:
            return marker * n + text
        if have != n:
            raise ImageError(f"the prompt has {have} image markers ({marker}) for {n} images")
        return text

    def expand(self, text: str, tokenizer: Tokenizer, sizes: Sequence[tuple[int, int]]) -> str:
        marker = tokenizer.token_text(self.smol.image_id)
        pieces = text.split(marker)
        if len(pieces) - 1 != len(sizes):
            raise ImageError(
                f"the prompt has {len(pieces) - 1} image markers ({marker}) for {len(sizes)} images"
            )
        out = [pieces[0]]
        for size, rest in zip(sizes, pieces[1:]):
            out += [placeholder(size, self.smol, marker), rest]
        return "".join(out)

    def place(self, ids: Sequence[int], embedded: Sequence[tuple[Tensor, str]]) -> list[ImageSpan]:
        """One ImageSpan per tile's run, each image's tiles in order."""
        n = self.smol.seq_len
        runs, i = [], 0
        while i < len(ids):
            if ids[i] != self.smol.image_id:
                i += 1
                continue
            j = i
            while j < len(ids) and ids[j] == self.smol.image_id:
                j += 1
            if j - i != n:
                raise ImageError(f"a tile takes {n} soft tokens; the prompt has {j - i}")
            runs.append(i)
            i = j
        want = sum(e.shape[0] // n for e, _ in embedded)
        if len(runs) != want:
            raise ImageError(f"the prompt has places for {len(runs)} tiles, the images have {want}")
        spans, r = [], 0
        for e, key in embedded:
            for t in range(e.shape[0] // n):
                spans.append(ImageSpan(runs[r], e[t * n : (t + 1) * n], f"{key}/{t}"))
                r += 1
        return spans


def build_vision(
    config: SmolVLMConfig, weights: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> SmolVLMVision:
    return SmolVLMVision(build_encoder(config, weights, dtype))


class PackageSmolVLMVision(SmolVLMVision):
    """A .pt2's vision_encoder (export/vision_pt2.py) behind SmolVLMVision:
    uint8 tiles in (tile_pixels), a tile's embeddings out."""

    def __init__(self, config: SmolVLMConfig, encoder: Callable[[Tensor], Tensor]):
        ImageTower.__init__(self)
        self.smol = config
        self._encoder = encoder

    def pixels(self, img: Image.Image) -> Tensor:
        return tile_pixels(img, self.smol)

    def encode(self, pixels: list[Tensor]) -> list[Tensor]:
        return [
            torch.cat([self._encoder(t[None].contiguous())[0] for t in tiles]) for tiles in pixels
        ]
