"""The ExecuTorch path: an eager model to a .pte through ExecuTorch's own LLM flow.

LLMEdgeManager, the llama example's source transforms and metadata, and the
XNNPACK partitioners; nothing is lowered here. What this adds: a
dynamic-shape KV-cache graph, bos/eos from the tokenizer, the exact 4-bit
linears in torchchat's ExecuTorch kernels (--quantize q4, gguf), and an
atomic write. By default the graph uses ExecuTorch's llama::update_cache /
custom_sdpa ops, as ExecuTorch's own flow does: its runners link them, and
et_run links our kernels for them (//kernels:et_llama_ops). Without them
(`custom_ops=False`) the graph needs only ExecuTorch's core, portable and
XNNPACK libraries, and decodes slower.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export import quant
from export.source import Source, build, build_native
from export.stages import Stages
from torchchat.atomic import atomic_output
from torchchat.errors import UserError

if TYPE_CHECKING:
    from executorch.extension.llm.export.builder import DType
    from torch import nn

    from torchchat.checkpoint import GGUFQuantized
    from torchchat.model import Model


def export(
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    custom_ops: bool = True,
    full_logits: bool = False,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """`source`'s model as a .pte at `out_path`: fp32 weights (a GGUF's own
    formats with --quantize gguf), then `spec`'s schemes in ExecuTorch's flow."""
    stages = stages or Stages(enabled=False)
    with stages("load", f"weights, max_seq_length {max_seq_length}"):
        if "gguf" in spec:
            model = build_native(source, max_seq_length)[0]
        else:
            model = build(source, "fp32", max_seq_length)
        model.transformer.generate_full_logits = full_logits
    return export_model(
        model,
        source,
        out_path,
        spec,
        dtype_name,
        max_seq_length,
        custom_ops,
        stages,
        source.ckpt.gguf_quantized,
    )


def enable_dynamic_shape(model: nn.Module) -> None:
    """Switches the llama Transformer to ExecuTorch's dynamic-shape KV-cache mode.

    torchchat builds it for eager/AOTI (input_pos holds every position); ET's
    runners call forward(tokens[1, T], start_pos[1]) with T varying, which is
    the Transformer's enable_dynamic_shape mode. Attention and the KV cache
    copy the flag at construction and RoPE reads it from ModelArgs at run
    time, so both places are set.
    """
    for mod in model.modules():
        if hasattr(mod, "enable_dynamic_shape") and isinstance(mod.enable_dynamic_shape, bool):
            mod.enable_dynamic_shape = True
        params = getattr(mod, "params", None)
        if params is not None and hasattr(params, "enable_dynamic_shape"):
            params.enable_dynamic_shape = True


def metadata(
    source: Source, max_seq_length: int, custom_ops: bool, q4_kernels: bool = False
) -> dict[str, Any]:
    """The program's metadata methods, which ExecuTorch's runners read."""
    from torchchat import executorch_compat as et

    extra: dict[str, Any] = {}
    if q4_kernels:
        from kernels import et_ops

        # Says which kernel library the program needs, so a runtime without
        # it can name the library instead of a missing operator.
        extra[et_ops.METADATA_METHOD] = et_ops.OPS_VERSION
    if source.bos_id is not None:
        extra["get_bos_id"] = source.bos_id
    if source.eos_ids:
        # ExecuTorch's runners stop only on these ids.
        extra["get_eos_ids"] = list(source.eos_ids)
    return et.load_llama_model_metadata(
        use_kv_cache=True,
        use_sdpa_with_kv_cache=custom_ops,
        enable_dynamic_shape=True,
        max_seq_len=max_seq_length,
        max_context_len=max_seq_length,
        n_layers=source.config.n_layers,
        vocab_size=source.config.vocab_size,
        metadata_str=json.dumps(extra),
    )


def exact_embedding(gguf_quantized: dict[str, GGUFQuantized] | None) -> bool:
    """Whether the checkpoint's embedding is GGUF Q8_0 blocks, which an 8-bit
    groups-of-32 embedding can keep exactly."""
    gq = (gguf_quantized or {}).get("tok_embeddings.weight")
    return gq is not None and gq.qtype == "Q8_0"


def q4_transform(
    gguf_quantized: dict[str, GGUFQuantized] | None, embedding: bool, counts: dict[str, int]
) -> Callable:
    """linear:int4 for a .pte: torchchat.quantize's linears (GGUF Q4 blocks
    kept, float weights as Q4_1) and a GGUF Q8_0 unembedding run as
    torchchat::q4_linear / q8_linear, as in a .pt2. With `embedding`, a GGUF
    Q8_0 embedding keeps its blocks in ExecuTorch's own 8-bit embedding op
    (quantized_decomposed::embedding_byte, group 32, fp16 scales), which ET's
    embedding transform would re-fit (HQQ scales) instead.

    It runs after ExecuTorch's transforms: their last one casts the model to
    the compute dtype, which would widen the fp16 scales.
    """

    def transform(model: Model) -> Model:
        import torch

        from torchchat import executorch_compat as et
        from torchchat import quantize as tc_quant

        counts.update(
            tc_quant.quantize_model(model, {"linear:int4": {"groupsize": 32}}, gguf_quantized)
        )
        if any(isinstance(m, tc_quant.Int4Linear) for m in model.modules()):
            raise UserError(
                "linear:int4 for a .pte needs the q4 op library (//kernels:q4); "
                "torch's int4pack fallback has no ExecuTorch kernel"
            )
        if embedding and gguf_quantized is not None:
            from kernels import q4

            gq = gguf_quantized["tok_embeddings.weight"]
            qs, scales = q4.pack_q8_0_blocks(gq.blocks, (int(gq.shape[0]), int(gq.shape[1])))
            vocab, dim = qs.shape
            emb = et.quantized_group_embedding(
                "cpu", vocab, dim, 32, dtype=torch.float32, scales_precision=torch.float16
            )
            emb.weight, emb.scales = qs, scales
            model.transformer.tok_embeddings = emb
            counts["embedding_q8_0"] = 1
        return model

    return transform


def et_quant_transforms(
    q: quant.EtQuant, et_dtype: DType, skip_embedding: bool = False
) -> list[Callable]:
    """ExecuTorch's quantization source transforms for `q`.

    The linear scheme covers the transformer layers only: the output
    projection (the unembedding, tied to the embedding in small models)
    keeps the compute dtype, as torchchat.quantize does in eager, because
    4- and 8-bit logits cost most of the top-1 agreement with fp32.
    """
    from executorch.extension.llm.export.builder import DType

    from torchchat import executorch_compat as et

    transforms: list[Callable] = []
    if q.embedding_quantize and not skip_embedding:
        transforms.append(et.quant_embedding_transform(q.embedding_quantize))
    if q.quantization_mode:
        linear = et.quant_weight_transform(
            q.quantization_mode,
            q.group_size,
            computation_dtype=et_dtype,
            checkpoint_dtype=DType.fp32,
        )

        def layers_only(model: Model) -> Model:
            linear(model.transformer.layers)
            return model

        transforms.append(layers_only)
    return transforms


def rule_sdpa_custom_ops(model: nn.Module) -> nn.Module:
    """Layers with their own attention rule (Gemma's windows, caps, scale)
    keep torchchat's RuleSDPA, which ExecuTorch's custom-op transform does
    not replace; with the custom ops on, it calls llama::custom_sdpa with
    the window as a mask (a score cap stays aten: the op has none)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 (registers llama::)

    from torchchat.attention import RuleSDPA

    for m in model.modules():
        if isinstance(m, RuleSDPA):
            m.custom_op = True
    return model


def export_model(
    model: Model,
    source: Source,
    out_path: Path,
    spec: dict[str, dict[str, Any]],
    dtype_name: str,
    max_seq_length: int,
    custom_ops: bool = True,
    stages: Stages | None = None,
    gguf_quantized: dict[str, GGUFQuantized] | None = None,
) -> dict[str, Any]:
    """Lowers an eager fp32 Model to `out_path` through ExecuTorch's LLM flow."""
    import torch
    from executorch.extension.llm.export.builder import DType, LLMEdgeManager
    from executorch.extension.llm.export.partitioner_lib import get_xnnpack_partitioner

    from torchchat import executorch_compat as et

    quiet_executorch()
    stages = stages or Stages(enabled=False)
    q = quant.for_executorch(spec)
    et_dtype = DType(dtype_name)
    enable_dynamic_shape(model)
    # Prefill of up to max_seq_length - 1 tokens: a Dim's upper bound equal to
    # the cache length trips export's range analysis (as in ET's builder).
    tokens_dim = torch.export.Dim("token_dim", max=max_seq_length - 1)
    example = (
        torch.tensor([[1, 2, 3]], dtype=torch.long)[:, : max_seq_length - 1],
        torch.tensor([0], dtype=torch.long),
    )
    builder = LLMEdgeManager(
        model=model,
        modelname=source.name or "model",
        max_seq_len=max_seq_length,
        use_kv_cache=True,
        example_inputs=example,
        dtype=DType.fp32,
        enable_dynamic_shape=True,
        dynamic_shapes=({1: tokens_dim}, None),
        metadata=metadata(source, max_seq_length, custom_ops, q.q4_kernels or q.gguf_kernels),
    )
    counts: dict[str, int] = {}
    exact_emb = q.q4_kernels and q.embedding_quantize == "8,32" and exact_embedding(gguf_quantized)
    with stages("quantize", q.describe() + f", dtype {dtype_name}"):
        transforms = et_quant_transforms(q, et_dtype, exact_emb) + et.get_source_transforms(
            et_dtype,
            checkpoint_dtype=DType.fp32,
            use_kv_cache=True,
            use_sdpa_with_kv_cache=custom_ops,
        )
        if q.q4_kernels:
            transforms.append(q4_transform(gguf_quantized, exact_emb, counts))
        if custom_ops:
            transforms.append(rule_sdpa_custom_ops)
        builder.source_transform(transforms)
        builder.dtype = et_dtype
    with stages("export", "torch.export with a dynamic token dimension"):
        builder.export()
        builder.run_canonical_optimizations()
    bf16 = dtype_name == "bf16"
    with stages("lower", "XNNPACK partitioners, to_executorch"):
        builder.to_edge_transform_and_lower(
            [
                get_xnnpack_partitioner(dynamic_quant_only_partitioner=True, enable_bf16=bf16),
                get_xnnpack_partitioner(dynamic_quant_only_partitioner=False, enable_bf16=bf16),
            ]
        )
        builder.to_executorch()
    with stages("serialize", str(out_path)):
        with atomic_output(str(out_path)) as tmp:
            with open(tmp, "wb") as f:
                builder.export_program.write_to_file(f)
    info: dict[str, Any] = {"metadata": builder.metadata, "quantize": q.describe()}
    if counts:
        info["quantize_counts"] = {k: v for k, v in counts.items() if v}
    return info


def quiet_executorch() -> None:
    # ExecuTorch's builder configures INFO logging at import and logs whole
    # graphs; stage lines are the progress report here.
    if not os.environ.get("EXPORT_LLM_VERBOSE"):
        logging.getLogger().setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
