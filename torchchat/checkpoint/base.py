"""What every checkpoint reader returns, and what they share: the Meta
weight names and RoPE layout the model consumes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torchchat.config import ConfigError, ModelConfig
from torchchat.vision import VisionConfig
from torchchat.vision_smolvlm import SmolVLMConfig


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the model."""


# GGUF types whose blocks //kernels:q4's q4/q8 ops take (--quantize
# linear:int4 keeps them exactly).
Q4_TYPES = ("Q4_0", "Q4_1")
Q8_TYPES = ("Q8_0",)


@dataclass
class GGUFTensor:
    """One GGUF tensor as the file holds it: its ggml type name, its bytes
    (uint8 [rows, row_bytes] for a 2-D tensor, usually a view of the
    mmapped file) and its logical shape. F32/F16/BF16 tensors are bytes too."""

    qtype: str
    blocks: np.ndarray
    shape: tuple[int, ...]

    def dequantize(self) -> torch.Tensor:
        """fp32 values in the logical shape (gguf-py's own dequantization)."""
        import gguf

        out = gguf.quants.dequantize(self.blocks, gguf.GGMLQuantizationType[self.qtype])
        out = np.asarray(out, dtype=np.float32).reshape(self.shape)
        return torch.from_numpy(out if out.flags.writeable else out.copy())

    def take_rows(self, rows: np.ndarray | slice) -> GGUFTensor:
        """Rows of a 2-D tensor: whole rows of blocks, so exact (a slice stays
        a view of the file; an index array copies)."""
        blocks = self.blocks[rows]
        return GGUFTensor(self.qtype, blocks, (int(blocks.shape[0]), self.shape[1]))


# The name the q4 kernels and export use for GGUF Q4_0/Q4_1/Q8_0 tensors.
GGUFQuantized = GGUFTensor


@dataclass
class Checkpoint:
    """A model config plus its weights in Meta names and Meta RoPE layout.

    HF and Meta checkpoints hold float tensors (`state_dict`). A GGUF holds
    every tensor in place (`gguf`); its `state_dict` is dequantized on first
    use only, for a model that asks for float weights (--dtype, --quantize).
    """

    config: ModelConfig
    path: Path
    format: str  # "gguf", "hf", "meta"
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    gguf: dict[str, GGUFTensor] = field(default_factory=dict)
    tokenizer_path: Path | None = None
    chat_template: str | None = None
    rope_freq_factors: torch.Tensor | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    add_bos: bool | None = None  # for prompts without a chat template
    # The vision tower and projector, when it has one: Gemma 3's
    # (torchchat.vision) or SmolVLM's (torchchat.vision_smolvlm).
    vision: VisionConfig | SmolVLMConfig | None = None
    vision_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    # A pipeline stage's checkpoint: the layers whose tensors it holds (with
    # the embedding, norm and output only where in_stage says); the model
    # built from it is that stage (checkpoint.build). None: every layer.
    layers: range | None = None

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.gguf and not self.weights:
            tied = self.config.tie_embeddings
            self.weights = {
                k: t.dequantize()
                for k, t in self.gguf.items()
                if not (tied and k == "output.weight")
            }
        return self.weights

    @property
    def gguf_quantized(self) -> dict[str, GGUFTensor]:
        """The 2-D GGUF tensors whose blocks the q4/q8 ops take as they are."""
        keep = (*Q4_TYPES, *Q8_TYPES)
        return {k: t for k, t in self.gguf.items() if t.qtype in keep and len(t.shape) == 2}


# --- Meta's RoPE layout ---------------------------------------------------------


def hf_to_meta_rope(
    w: torch.Tensor, n_heads: int, head_dim: int, rotary_dim: int | None = None
) -> torch.Tensor:
    """HF keeps each head's rotary halves split; Meta interleaves the pairs.
    With partial rotary only the first `rotary_dim` dims of a head rotate,
    and the rest stay in place."""
    rest = w.shape[1:]
    rot = rotary_dim or head_dim
    w = w.reshape(n_heads, head_dim, *rest)
    r = w[:, :rot].reshape(n_heads, 2, rot // 2, *rest).transpose(1, 2).reshape(n_heads, rot, *rest)
    return torch.cat([r, w[:, rot:]], dim=1).reshape(n_heads * head_dim, *rest)


_ROTATED = ("wq.weight", "wq.bias", "wk.weight", "wk.bias", "q_norm_fn.weight", "k_norm_fn.weight")


def rotated(meta: str) -> bool:
    """Whether a weight's rows follow RoPE's pairing of dimensions."""
    return meta.endswith(_ROTATED)


def to_meta_rope(meta: str, w: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """A q/k projection, or a q/k norm (one head's worth of weights, or
    OLMo 2's all heads'), from HF's split-halves layout into Meta's
    interleaved one."""
    if meta.endswith(("q_norm_fn.weight", "k_norm_fn.weight")):
        heads = w.shape[0] // config.head_dim
        return hf_to_meta_rope(w, heads, config.head_dim, config.rotary_dim)
    heads = config.n_heads if ".wq." in meta else config.n_kv_heads
    return hf_to_meta_rope(w, heads, config.head_dim, config.rotary_dim)


def meta_rope_rows(meta: str, n_rows: int, config: ModelConfig) -> np.ndarray:
    """The row order that takes a rotated weight to Meta's layout: the same
    permutation as to_meta_rope, as indices (it moves whole rows of blocks)."""
    rows = torch.arange(n_rows).unsqueeze(1)
    return to_meta_rope(meta, rows, config).squeeze(1).numpy()


def split_fused(layer: str, part: str, n_rows: int, config: ModelConfig) -> dict[str, slice]:
    """Meta-named row ranges of a fused projection: `part` is HF's name
    ("self_attn.qkv_proj.weight") or GGUF's ("attn_qkv.weight")."""
    if part in ("self_attn.qkv_proj.weight", "attn_qkv.weight"):
        q = config.n_heads * config.head_dim
        kv = config.n_kv_heads * config.head_dim
        if n_rows != q + 2 * kv:
            raise CheckpointError(f"{layer}{part} has {n_rows} rows, not q+k+v = {q + 2 * kv}")
        return {
            f"{layer}attention.wq.weight": slice(0, q),
            f"{layer}attention.wk.weight": slice(q, q + kv),
            f"{layer}attention.wv.weight": slice(q + kv, q + 2 * kv),
        }
    if n_rows != 2 * config.hidden_dim:
        raise CheckpointError(f"{layer}{part} has {n_rows} rows, not 2 x {config.hidden_dim}")
    return {
        f"{layer}feed_forward.w1.weight": slice(0, config.hidden_dim),
        f"{layer}feed_forward.w3.weight": slice(config.hidden_dim, 2 * config.hidden_dim),
    }


# --- pipeline stages --------------------------------------------------------------

_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def in_stage(meta: str, config: ModelConfig, layers: range | None) -> bool:
    """Whether a pipeline stage holding `layers` needs the Meta-named weight:
    its layers' own, the embedding in the first stage (and in the last when
    the output shares it), the final norm and output in the last."""
    if layers is None:
        return True
    m = _LAYER_NAME.fullmatch(meta)
    if m:
        return int(m.group(1)) in layers
    first, last = layers.start == 0, layers.stop == config.n_layers
    if meta == "tok_embeddings.weight":
        return first or (last and config.tie_embeddings)
    return last


def stage_name(meta: str, layers: range | None) -> str:
    """A stage model's name for a checkpoint's weight: its layers count from 0."""
    m = _LAYER_NAME.fullmatch(meta)
    if layers is None or not m:
        return meta
    return f"layers.{int(m.group(1)) - layers.start}.{m.group(2)}"


def checkpoint_name(name: str, layers: range | None) -> str:
    """stage_name's inverse: the checkpoint's name for a stage model's weight."""
    m = _LAYER_NAME.fullmatch(name)
    if layers is None or not m:
        return name
    return f"layers.{int(m.group(1)) + layers.start}.{m.group(2)}"


def find_tokenizer(d: Path) -> Path | None:
    for name in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model"):
        if (d / name).exists():
            return d / name
    return None


# --- reading ----------------------------------------------------------------------


# A pipeline stage's layers, given the model's layer count.
Stage = Callable[[int], range]


def load_checkpoint(path: os.PathLike | str, stage: Stage | None = None) -> Checkpoint:
    """Loads a .gguf file, an HF directory or a Meta directory/.pth. With
    `stage`, a GGUF or safetensors checkpoint reads only the tensors of the
    pipeline stage it names (in_stage), and its `layers` say which."""
    from torchchat.checkpoint import gguf, hf, meta

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        if p.is_file() and p.suffix == ".gguf":
            return gguf.load_gguf(p, stage)
        d = p if p.is_dir() else p.parent
        if (d / "config.json").exists() and any(d.glob("*.safetensors")):
            return hf.load_hf(d, stage)
        if (d / "params.json").exists():
            if stage is not None:
                raise CheckpointError(
                    f"{p}: a Meta .pth checkpoint is read whole; a pipeline stage needs a "
                    "GGUF or safetensors checkpoint"
                )
            return meta.load_meta(p)
        if p.is_dir() and len(list(p.glob("*.gguf"))) == 1:
            return gguf.load_gguf(next(p.glob("*.gguf")), stage)
    except (CheckpointError, ConfigError):
        raise
    except (KeyError, ValueError, OSError, RuntimeError, IndexError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {e}") from e
    raise CheckpointError(
        f"{p} is not a recognised checkpoint (a .gguf file, a directory with "
        "config.json + *.safetensors, or consolidated.*.pth + params.json)"
    )
