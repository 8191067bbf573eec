"""Images in: Gemma 3's vision tower (SigLIP) and multimodal projector,
its image preprocessing, and where an image's tokens sit in a prompt.

An image becomes `mm_tokens_per_image` soft tokens: the text model reads
the projector's output at those positions instead of token embeddings
(`ImageSpan`, passed to `Model.forward`), and attends within each image's
run of soft tokens in both directions, as transformers' Gemma 3 does.
"""

from __future__ import annotations

import collections
import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from PIL import Image

    from torchchat.tokenizer import Tokenizer


class ImageError(ValueError):
    """An image that cannot be used: unreadable, truncated, too large."""


# Larger images are refused before decoding (a decompression bomb would
# otherwise allocate gigabytes); 8192 x 8192 is far above any processor size.
MAX_PIXELS = 8192 * 8192


def _given(value: int | None, name: str) -> int:
    if value is None:
        raise ValueError(f"config.json has no {name}")
    return int(value)


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower (SigLIP), the projector and the image processor."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int
    patch_size: int
    eps: float
    text_dim: int
    mm_tokens: int
    boi_id: int
    eoi_id: int
    image_id: int
    # The processor's: resize to image_size, x * rescale, then (x - mean) / std.
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # transformers' PILImageResampling (2: bilinear, Gemma 3's).
    resample: int = 2

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], d: Path | None = None) -> VisionConfig:
        """From a Gemma3ForConditionalGeneration config.json (and the
        directory's preprocessor_config.json, when there is one)."""
        import transformers

        full = transformers.Gemma3Config(**cfg)
        # Typed `PreTrainedConfig | dict | None`; Gemma3Config always builds both.
        v: Any = full.vision_config
        t: Any = full.text_config
        extra: dict[str, Any] = {}
        pre = d / "preprocessor_config.json" if d is not None else None
        if pre is not None and pre.exists():
            p = json.loads(pre.read_text())
            size = p.get("size") or {}
            if size and (size.get("height"), size.get("width")) != (v.image_size, v.image_size):
                raise ValueError(
                    f"preprocessor size {size} differs from the vision tower's {v.image_size}"
                )
            extra = {
                "rescale": float(p.get("rescale_factor", 1 / 255)),
                "mean": tuple(p.get("image_mean", (0.5, 0.5, 0.5))),
                "std": tuple(p.get("image_std", (0.5, 0.5, 0.5))),
                "resample": int(p.get("resample", 2)),
            }
        return cls(
            hidden=v.hidden_size,
            intermediate=v.intermediate_size,
            layers=v.num_hidden_layers,
            heads=v.num_attention_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            eps=v.layer_norm_eps,
            text_dim=t.hidden_size,
            mm_tokens=_given(full.mm_tokens_per_image, "mm_tokens_per_image"),
            boi_id=_given(full.boi_token_index, "boi_token_index"),
            eoi_id=_given(full.eoi_token_index, "eoi_token_index"),
            image_id=_given(full.image_token_index, "image_token_index"),
            **extra,
        )


# --- the vision tower and projector ----------------------------------------------


class TowerShape(Protocol):
    """What a SigLIP layer reads of a family's config."""

    @property
    def hidden(self) -> int: ...
    @property
    def intermediate(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def eps(self) -> float: ...


class SiglipLayer(nn.Module):
    def __init__(self, c: TowerShape):
        super().__init__()
        self.heads = c.heads
        self.layer_norm1 = nn.LayerNorm(c.hidden, eps=c.eps)
        self.layer_norm2 = nn.LayerNorm(c.hidden, eps=c.eps)
        self.q_proj = nn.Linear(c.hidden, c.hidden)
        self.k_proj = nn.Linear(c.hidden, c.hidden)
        self.v_proj = nn.Linear(c.hidden, c.hidden)
        self.out_proj = nn.Linear(c.hidden, c.hidden)
        self.fc1 = nn.Linear(c.hidden, c.intermediate)
        self.fc2 = nn.Linear(c.intermediate, c.hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.layer_norm1(x)

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h))
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out_proj(a.transpose(1, 2).reshape(b, n, d))
        h = nn.functional.gelu(self.fc1(self.layer_norm2(x)), approximate="tanh")
        return x + self.fc2(h)


class VisionEncoder(nn.Module):
    """pixels [B, 3, S, S] -> soft tokens [B, mm_tokens, text_dim]: SigLIP's
    patches and encoder, then Gemma 3's projector (average pooling to
    mm_tokens, an RMSNorm with a (1 + w) weight, a linear map)."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.config = c
        self.patches = c.image_size // c.patch_size
        self.patch_embedding = nn.Conv2d(3, c.hidden, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(self.patches**2, c.hidden)
        self.layers = nn.ModuleList(SiglipLayer(c) for _ in range(c.layers))
        self.post_layernorm = nn.LayerNorm(c.hidden, eps=c.eps)
        side = int(round(c.mm_tokens**0.5))
        if side * side != c.mm_tokens or self.patches % side:
            raise ValueError(
                f"mm_tokens_per_image {c.mm_tokens} does not pool a {self.patches}^2 patch grid"
            )
        self.pool = nn.AvgPool2d(self.patches // side)
        self.mm_soft_emb_norm = nn.Parameter(torch.zeros(c.hidden))
        self.mm_input_projection = nn.Parameter(torch.zeros(c.hidden, c.text_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.position_embedding.weight
        for layer in self.layers:
            x = layer(x)
        x = self.post_layernorm(x)
        b, n, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, self.patches, self.patches)
        x = self.pool(grid).flatten(2).transpose(1, 2)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.config.eps)
        x = (xf * (1.0 + self.mm_soft_emb_norm.float())).type_as(x)
        return torch.matmul(x, self.mm_input_projection)


_LAYER = {
    "layer_norm1": "layer_norm1",
    "layer_norm2": "layer_norm2",
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.out_proj": "out_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}


def vision_tensor_name(name: str) -> str | None:
    """A Gemma 3 checkpoint's vision tensor name in VisionEncoder, or None
    for one it does not use (SigLIP's pooling head, which Gemma 3 skips).
    Takes the names after the `vision_tower.` or `multi_modal_projector.`
    prefix, with that prefix's first word."""
    if name.startswith("multi_modal_projector."):
        rest = name[len("multi_modal_projector.") :]
        return {
            "mm_input_projection_weight": "mm_input_projection",
            "mm_soft_emb_norm.weight": "mm_soft_emb_norm",
        }.get(rest)
    rest = name[len("vision_tower.") :]
    rest = rest.removeprefix("vision_model.")
    if rest.startswith("head."):
        return None
    if rest.startswith("embeddings."):
        return rest[len("embeddings.") :]
    if rest.startswith("post_layernorm."):
        return rest
    parts = rest.split(".")
    if parts[:2] == ["encoder", "layers"] and len(parts) >= 5:
        sub = ".".join(parts[3:-1])
        if sub in _LAYER:
            return f"layers.{parts[2]}.{_LAYER[sub]}.{parts[-1]}"
    raise ValueError(f"vision tensor {name!r} has no place in the vision tower")


T = TypeVar("T", bound=nn.Module)


def load_tower(tower: T, weights: dict[str, Tensor], dtype: torch.dtype) -> T:
    """Any family's tower with its weights, every one of them, in `dtype`."""
    missing, unexpected = tower.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"vision weights do not match the tower: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return tower.to(dtype).eval()


def build_encoder(
    config: VisionConfig, weights: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> VisionEncoder:
    return load_tower(VisionEncoder(config), weights, dtype)


# --- images ------------------------------------------------------------------------


def open_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decodes `data` with Pillow, fully (a truncated file fails here, not
    later), as RGB. ImageError names `name`."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} is too large (at most {max_pixels} pixels)")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot be decoded ({e})") from None
    return img.convert("RGB")


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: {e.strerror or e}") from None
    return open_image(data, str(p), max_pixels)


def preprocess(img: Image.Image, c: VisionConfig) -> Tensor:
    """pixels [3, S, S] as Gemma 3's image processor makes them: resized to
    the tower's size with the processor's filter, rescaled, normalised."""
    import numpy as np

    size = (c.image_size, c.image_size)
    resized = img.convert("RGB").resize(size, resample=c.resample)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1)
    x = x * c.rescale
    mean = torch.tensor(c.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(c.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


# --- prompts -------------------------------------------------------------------------


@dataclass
class ImageSpan:
    """An image's soft tokens in a sequence: its embeddings [n, text_dim]
    go at positions start..start+n-1; `key` names the image (a hash of its
    pixels), so a cached prefix is reused only for the same image."""

    start: int
    embeds: Tensor
    key: str

    @property
    def end(self) -> int:
        return self.start + self.embeds.shape[0]


def expand_images(text: str, tokenizer: Tokenizer, c: VisionConfig) -> str:
    """The rendered prompt with each begin-of-image marker expanded to the
    image's soft tokens, as Gemma 3's processor expands it."""
    boi = tokenizer.token_text(c.boi_id)
    soft = tokenizer.token_text(c.image_id) * c.mm_tokens
    full = f"\n\n{boi}{soft}{tokenizer.token_text(c.eoi_id)}\n\n"
    return text.replace(boi, full)


def with_markers(text: str, n: int, tokenizer: Tokenizer, c: VisionConfig) -> str:
    """A plain prompt (no chat template) with a begin-of-image marker per
    image: where the prompt writes them, else all before its text."""
    boi = tokenizer.token_text(c.boi_id)
    have = text.count(boi)
    if have == 0:
        return boi * n + text
    if have != n:
        raise ImageError(f"the prompt has {have} image markers ({boi}) for {n} images")
    return text


def image_runs(ids: Sequence[int], c: VisionConfig) -> list[int]:
    """The start of each run of soft tokens in `ids`; each must be exactly
    mm_tokens long (ImageError otherwise)."""
    starts, i = [], 0
    while i < len(ids):
        if ids[i] != c.image_id:
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == c.image_id:
            j += 1
        if j - i != c.mm_tokens:
            raise ImageError(f"an image takes {c.mm_tokens} soft tokens; the prompt has {j - i}")
        starts.append(i)
        i = j
    return starts


def pixel_key(pixels: Tensor) -> str:
    import hashlib

    return hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()[:16]


class ImageTower:
    """A loaded vision tower: images -> ImageSpans. What differs per family
    (preprocessing, the tower, where the soft tokens go) is its subclass's;
    the cache and the order of the steps are here.

    The last CACHED images' embeddings are kept by key: a chat sends every
    earlier turn's images again with each new one (the server's clients,
    the page), and the tower costs far more than the preprocessing."""

    CACHED = 16

    def __init__(self) -> None:
        self._cache: collections.OrderedDict[str, Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()  # the server embeds from several threads

    def pixels(self, img: Image.Image) -> Tensor:
        """The image as the tower's input (one family's preprocessing)."""
        raise NotImplementedError

    def encode(self, pixels: list[Tensor]) -> list[Tensor]:
        """Each image's soft-token embeddings [n, text_dim] from its pixels."""
        raise NotImplementedError

    def with_markers(self, text: str, n: int, tokenizer: Tokenizer) -> str:
        """`text` with a marker for each of `n` images where it has none."""
        raise NotImplementedError

    def expand(self, text: str, tokenizer: Tokenizer, sizes: Sequence[tuple[int, int]]) -> str:
        """The rendered prompt with each image's marker expanded to its soft
        tokens; `sizes` are the images' (width, height), in order, for the
        families whose token count depends on them."""
        raise NotImplementedError

    def place(self, ids: Sequence[int], embedded: Sequence[tuple[Tensor, str]]) -> list[ImageSpan]:
        """ImageSpans for a prompt's soft-token runs, given each image's
        (embeddings, key) in order."""
        raise NotImplementedError

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> list[tuple[Tensor, str]]:
        """Each image's soft-token embeddings [n, text_dim] and key."""
        if not images:
            return []
        pixels = [self.pixels(im) for im in images]
        keys = [pixel_key(p) for p in pixels]
        with self._lock:
            known = {k: self._cache[k] for k in keys if k in self._cache}
        todo = list({k: i for i, k in enumerate(keys) if k not in known}.values())
        if todo:
            out = self.encode([pixels[i] for i in todo])
            for j, i in enumerate(todo):
                known[keys[i]] = out[j]
        with self._lock:
            for k in keys:
                self._cache[k] = known[k]
                self._cache.move_to_end(k)
            while len(self._cache) > self.CACHED:
                self._cache.popitem(last=False)
        return [(known[k], k) for k in keys]

    def spans(self, ids: Sequence[int], images: Sequence[Image.Image]) -> list[ImageSpan]:
        """ImageSpans for a prompt's soft-token runs, one image each, in order."""
        return self.place(ids, self.embed(images))


class Vision(ImageTower):
    """Gemma 3's tower (SigLIP and its projector): one run of soft tokens per
    image, at the image's size."""

    def __init__(self, encoder: VisionEncoder):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config

    def pixels(self, img: Image.Image) -> Tensor:
        return preprocess(img, self.config)

    def encode(self, pixels: list[Tensor]) -> list[Tensor]:
        dtype = self.encoder.mm_input_projection.dtype
        return list(self.encoder(torch.stack(pixels).to(dtype)))

    def with_markers(self, text: str, n: int, tokenizer: Tokenizer) -> str:
        return with_markers(text, n, tokenizer, self.config)

    def expand(self, text: str, tokenizer: Tokenizer, sizes: Sequence[tuple[int, int]]) -> str:
        return expand_images(text, tokenizer, self.config)

    def place(self, ids: Sequence[int], embedded: Sequence[tuple[Tensor, str]]) -> list[ImageSpan]:
        starts = image_runs(ids, self.config)
        if len(starts) != len(embedded):
            raise ImageError(
                f"the prompt has places for {len(starts)} images, given {len(embedded)}"
            )
        return [ImageSpan(s, e, k) for s, (e, k) in zip(starts, embedded)]


class PackageVision(Vision):
    """A .pt2's vision_encoder (export/vision_pt2.py) behind Vision: uint8
    pixels resized as the processor resizes them in, the embeddings its
    decoder takes out (already divided by Gemma's embedding scale, which
    torchchat.artifacts.Pt2Model passes through as they are)."""

    def __init__(self, config: VisionConfig, encoder: Callable[[Tensor], Tensor]):
        ImageTower.__init__(self)
        self.config = config
        self._encoder = encoder

    def pixels(self, img: Image.Image) -> Tensor:
        import numpy as np

        size = (self.config.image_size, self.config.image_size)
        resized = img.convert("RGB").resize(size, resample=self.config.resample)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)

    def encode(self, pixels: list[Tensor]) -> list[Tensor]:
        return [self._encoder(p[None].contiguous())[0] for p in pixels]
