"""A .pte for a checkpoint with a vision tower (Gemma 3 or SmolVLM), in the
shape ExecuTorch's multimodal runner (extension/llm/runner) loads: methods

- `vision_encoder(pixels uint8 [1, 3, S, S]) -> [1, tokens, dim]`: the
  tower and projector (SmolVLM: connector) for one image (SmolVLM: one
  tile), with the processor's rescale and normalisation in the graph, so a
  runner only decodes, resizes and (SmolVLM) cuts tiles;
- `token_embedding(tokens [1, T]) -> [1, T, dim]`;
- `text_decoder(embeddings [1, T, dim], start_pos [1]) -> logits`: causal;
- `image_decoder`: the same decoder, for a chunk that is one image's soft
  tokens. Gemma 3's attend to one another in both directions (transformers'
  Gemma 3 mask, torchchat.model.Model.image_blocks in eager); SmolVLM's
  causally, as its Llama does, so there it is text_decoder again.
  ExecuTorch's runner knows only text_decoder and runs images causally.

The two decoders share the KV cache (`share_mutable_buffers`).
Constant methods add to the LLM metadata: `get_image_size`,
`get_image_tokens` (per tile), `get_boi_token_id` (the marker a prompt
writes: SmolVLM's `<image>`), `get_eoi_token_id` (-1 for SmolVLM),
`get_image_token_id`; SmolVLM's also `get_image_longest_edge`,
`get_image_split`, `get_image_resample` (its processor's, which the
runners replay: runner/common/image.h).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from export import quant
from export.source import Source, build
from export.stages import Stages
from torchchat.atomic import atomic_output
from torchchat.errors import UserError

if TYPE_CHECKING:
    from torchchat.vision import VisionEncoder
    from torchchat.vision_smolvlm import SmolVLMEncoder

METHODS = ("vision_encoder", "token_embedding", "text_decoder", "image_decoder")


class PixelsEncoder(nn.Module):
    """uint8 pixels at the tower's size -> the text model's input embeddings
    for an image (a tile): normalised as the processor does, and divided by
    the embedding scale (Gemma's; 1 for Llama), which the first block
    applies to every input row (Model.embed does the same in eager)."""

    mean: Tensor
    std: Tensor
    scale: Tensor

    def __init__(self, encoder: VisionEncoder | SmolVLMEncoder, embedding_scale: float):
        super().__init__()
        c = encoder.config
        self.encoder = encoder
        self.rescale = c.rescale
        self.register_buffer("mean", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(embedding_scale), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = (pixels.to(torch.float32) * self.rescale - self.mean) / self.std
        return self.encoder(x) / self.scale


class EmbeddingsDecoder(nn.Module):
    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, embeddings: Tensor, start_pos: Tensor) -> Tensor:
        return self.transformer(None, {"input_pos": start_pos}, embeddings)


class ImageChunkSDPA(nn.Module):
    """A layer's SDPA for a chunk that is one image: the chunk's queries see
    every key of the chunk, and the cache before it as always."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask):  # noqa: ANN001, ANN201 (ExecuTorch's SDPA signature)
        if getattr(self.inner, "use_attention_mask", True) and mask is not None:
            start = input_pos[-1]
            cols = torch.arange(mask.shape[-1], device=mask.device)
            chunk = (cols >= start) & (cols < start + seqlen)
            return self.inner(input_pos, q, k, v, bsz, seqlen, mask | chunk)
        # ExecuTorch's SDPACustom, causal without a mask: not causal, the
        # op attends to the first start_pos + seqlen keys.
        y = torch.ops.llama.custom_sdpa(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            input_pos[-1].item(),
            None,
            0,
            False,
        )
        return y.reshape(bsz, seqlen, self.inner.dim)


def image_chunks(transformer: Any, on: bool) -> None:
    """Wraps (on) or unwraps each layer's SDPA in ImageChunkSDPA."""
    for layer in transformer.layers:
        attn = layer.attention
        if on and not isinstance(attn.SDPA, ImageChunkSDPA):
            attn.SDPA = ImageChunkSDPA(attn.SDPA)
        elif not on and isinstance(attn.SDPA, ImageChunkSDPA):
            attn.SDPA = attn.SDPA.inner


def vision_metadata(source: Source) -> dict[str, int]:
    from torchchat.vision import VisionConfig
    from torchchat.vision_smolvlm import SmolVLMConfig

    c = source.ckpt.vision
    if isinstance(c, SmolVLMConfig):
        return {
            "get_image_size": c.image_size,
            "get_image_tokens": c.seq_len,
            "get_boi_token_id": c.image_id,
            "get_eoi_token_id": -1,
            "get_image_token_id": c.image_id,
            "get_image_longest_edge": c.longest_edge,
            "get_image_split": int(c.split),
            "get_image_resample": c.resample,
        }
    assert isinstance(c, VisionConfig)  # check() refused the others
    return {
        "get_image_size": c.image_size,
        "get_image_tokens": c.mm_tokens,
        "get_boi_token_id": c.boi_id,
        "get_eoi_token_id": c.eoi_id,
        "get_image_token_id": c.image_id,
    }


def bidirectional(source: Source) -> bool:
    """Whether an image's soft tokens attend to one another both ways
    (Gemma 3), or causally (SmolVLM)."""
    from torchchat.vision import VisionConfig

    return isinstance(source.ckpt.vision, VisionConfig)


def pixels_encoder(source: Source) -> tuple[PixelsEncoder, Tensor]:
    """The vision_encoder (either family's tower, fp32) and an example input."""
    from torchchat import vision, vision_smolvlm

    c = source.ckpt.vision
    tower: VisionEncoder | SmolVLMEncoder
    if isinstance(c, vision_smolvlm.SmolVLMConfig):
        tower = vision_smolvlm.build_encoder(c, source.ckpt.vision_weights)
    else:
        assert isinstance(c, vision.VisionConfig)  # check() refused the others
        tower = vision.build_encoder(c, source.ckpt.vision_weights)
    pixels = torch.zeros(1, 3, c.image_size, c.image_size, dtype=torch.uint8)
    return PixelsEncoder(tower, source.config.embedding_scale).eval(), pixels


def check(spec: dict[str, dict[str, Any]], full_logits: bool, vision: object) -> None:
    """What a vision .pte cannot do, refused before any work."""
    from torchchat.vision import VisionConfig
    from torchchat.vision_smolvlm import SmolVLMConfig

    if not isinstance(vision, VisionConfig | SmolVLMConfig):
        raise UserError(
            "only Gemma 3's and SmolVLM's vision towers export to a .pte; this checkpoint's "
            f"({type(vision).__name__}) runs in eager (generate/chat --image, the server)"
        )
    if isinstance(vision, SmolVLMConfig) and vision.resample not in (1, 2, 3):
        raise UserError(
            f"the image processor's resample filter {vision.resample} is not one the runners "
            "replay (Lanczos 1, bilinear 2, bicubic 3)"
        )
    if "gguf" in spec:
        raise UserError("--quantize gguf keeps a GGUF's formats; this checkpoint is HF safetensors")
    if full_logits:
        raise UserError(
            "--full-logits: a .pte with a vision encoder returns the last logits only; drop it"
        )


def export(
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    custom_ops: bool = True,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """`source` (with a vision tower) as a multimodal .pte at `out_path`."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig
    from executorch.exir import to_edge_transform_and_lower as lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    from executorch.extension.llm.export.builder import DType, LLMEdgeManager
    from executorch.extension.llm.export.partitioner_lib import get_xnnpack_partitioner

    from export import pte
    from torchchat import executorch_compat as et

    stages = stages or Stages(enabled=False)
    ckpt = source.ckpt
    pte.quiet_executorch()
    q = quant.for_executorch(spec)
    et_dtype = DType(dtype_name)
    with stages("load", f"weights and vision tower, max_seq_length {max_seq_length}"):
        model = build(source, "fp32", max_seq_length)
        pixel_encoder, pixels = pixels_encoder(source)
        pte.enable_dynamic_shape(model)
    dim = source.config.dim
    tokens_dim = torch.export.Dim("token_dim", max=max_seq_length - 1)
    embeds = torch.zeros(1, 3, dim)
    meta = pte.metadata(source, max_seq_length, custom_ops, q.q4_kernels)
    meta.update(vision_metadata(source))
    builder = LLMEdgeManager(
        model=EmbeddingsDecoder(model.transformer),
        modelname=(source.name or "model") + "_text_decoder",
        max_seq_len=max_seq_length,
        use_kv_cache=True,
        example_inputs=(embeds, torch.tensor([0], dtype=torch.long)),
        dtype=DType.fp32,
        enable_dynamic_shape=True,
        dynamic_shapes=({1: tokens_dim}, None),
        metadata=meta,
    )
    counts: dict[str, int] = {}
    with stages("quantize", q.describe() + f", dtype {dtype_name}"):
        transforms = pte.et_quant_transforms(q, et_dtype) + et.get_source_transforms(
            et_dtype,
            checkpoint_dtype=DType.fp32,
            use_kv_cache=True,
            use_sdpa_with_kv_cache=custom_ops,
        )
        if q.q4_kernels:
            transforms.append(pte.q4_transform(ckpt.gguf_quantized, False, counts))
        if custom_ops:
            transforms.append(pte.rule_sdpa_custom_ops)
        builder.source_transform(transforms)
        builder.dtype = et_dtype
    transformer = builder.model.transformer
    programs: dict[str, Any] = {}
    with stages("export", ", ".join(METHODS)):
        builder.export()
        builder.run_canonical_optimizations()
        programs["text_decoder"] = builder._export(builder.pre_autograd_graph_module)  # noqa: SLF001
        image_chunks(transformer, bidirectional(source))
        try:
            builder.export()
            programs["image_decoder"] = builder._export(builder.pre_autograd_graph_module)  # noqa: SLF001
        finally:
            image_chunks(transformer, False)
        with torch.no_grad():
            programs["token_embedding"] = torch.export.export(
                transformer.tok_embeddings,
                (torch.tensor([[1, 2, 3]], dtype=torch.long),),
                dynamic_shapes=({1: tokens_dim},),
                strict=True,
            )
            programs["vision_encoder"] = torch.export.export(
                pixel_encoder, (pixels,), strict=True
            ).run_decompositions({})
    bf16 = dtype_name == "bf16"

    def partitioners() -> list[Any]:
        return [
            get_xnnpack_partitioner(dynamic_quant_only_partitioner=True, enable_bf16=bf16),
            get_xnnpack_partitioner(dynamic_quant_only_partitioner=False, enable_bf16=bf16),
        ]

    with stages("lower", "XNNPACK partitioners, to_executorch"):
        from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass

        edge = lower(
            programs,
            partitioner={m: partitioners() for m in METHODS},
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=builder.metadata,
        )
        edge = edge.transform([ConvertToLinearPass()])
        program = edge.to_executorch(
            ExecutorchBackendConfig(
                extract_delegate_segments=True,
                do_quant_fusion_and_const_prop=True,
                memory_planning_pass=MemoryPlanningPass(
                    alloc_graph_input=False, share_mutable_buffers=True
                ),
                emit_mutable_buffer_names=True,
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            )
        )
    with stages("serialize", str(out_path)):
        with atomic_output(str(out_path)) as tmp:
            with open(tmp, "wb") as f:
                program.write_to_file(f)
    info: dict[str, Any] = {
        "metadata": builder.metadata,
        "quantize": q.describe(),
        "methods": list(METHODS),
    }
    if counts:
        info["quantize_counts"] = {k: v for k, v in counts.items() if v}
    json.dumps(info)  # only plain values: the CLI prints it
    return info
