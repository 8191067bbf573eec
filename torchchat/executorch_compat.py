"""Every use of ExecuTorch's private or example-only Python APIs, in one place.

ExecuTorch's LLM export flow keeps some of what we reuse in underscore names
and under `executorch.examples` (the llama example's model definition,
metadata and source transforms). They can move in any release. Code here and
in //export calls them only through this module, and `check()` (run by
compat_test) imports each one, so an upgrade that moves one fails loudly
with its name instead of deep inside an export.

In C++, the one such use is ThreadPool::_unsafe_reset_threadpool in
runner/et/thread_pool.cc; thread_pool_test covers it.
"""

from __future__ import annotations

import importlib
from typing import Any

# (module, attribute) for each private or example-only API we call.
APIS: tuple[tuple[str, str], ...] = (
    ("executorch.examples.models.llama.model_args", "ModelArgs"),
    ("executorch.examples.models.llama.llama_transformer", "construct_transformer"),
    ("executorch.examples.models.llama.export_llama_lib", "_load_llama_model_metadata"),
    ("executorch.examples.models.llama.export_llama_lib", "_get_source_transforms"),
    (
        "executorch.examples.models.llama.source_transformation.quantize",
        "get_quant_embedding_transform",
    ),
    (
        "executorch.examples.models.llama.source_transformation.quantize",
        "get_quant_weight_transform",
    ),
    (
        "executorch.examples.models.llama.source_transformation.quantize",
        "QuantizedGroupEmbedding",
    ),
    ("executorch.exir._serialize._program", "deserialize_pte_binary"),
)


def _get(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"ExecuTorch no longer has {module}.{name} ({type(e).__name__}: {e}); "
            "torchchat/executorch_compat.py must follow the move"
        ) from e


def check() -> list[str]:
    """Imports every API in APIS; returns their dotted names."""
    from torchchat import compat  # noqa: F401  (the llama example imports torchtune)

    return [f"{m}.{n}" for m, n in APIS if _get(m, n) is not None]


def model_args(**kwargs: Any) -> Any:
    return _get("executorch.examples.models.llama.model_args", "ModelArgs")(**kwargs)


def construct_transformer(args: Any) -> Any:
    return _get("executorch.examples.models.llama.llama_transformer", "construct_transformer")(args)


def load_llama_model_metadata(**kwargs: Any) -> Any:
    return _get("executorch.examples.models.llama.export_llama_lib", "_load_llama_model_metadata")(
        **kwargs
    )


def get_source_transforms(*args: Any, **kwargs: Any) -> list[Any]:
    return _get("executorch.examples.models.llama.export_llama_lib", "_get_source_transforms")(
        *args, **kwargs
    )


def quant_embedding_transform(*args: Any, **kwargs: Any) -> Any:
    return _get(
        "executorch.examples.models.llama.source_transformation.quantize",
        "get_quant_embedding_transform",
    )(*args, **kwargs)


def quantized_group_embedding(*args: Any, **kwargs: Any) -> Any:
    """ExecuTorch's 8/4/2-bit embedding module (quantized_decomposed ops)."""
    return _get(
        "executorch.examples.models.llama.source_transformation.quantize",
        "QuantizedGroupEmbedding",
    )(*args, **kwargs)


def quant_weight_transform(*args: Any, **kwargs: Any) -> Any:
    return _get(
        "executorch.examples.models.llama.source_transformation.quantize",
        "get_quant_weight_transform",
    )(*args, **kwargs)


def deserialize_pte_binary(data: bytes) -> Any:
    return _get("executorch.exir._serialize._program", "deserialize_pte_binary")(data)
