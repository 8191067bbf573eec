"""Generation from exported artifacts (.pt2 / .pte) through the same loop.

Both are expected to take (tokens[1, T], input_pos[T]) and return the last
position's logits, which is the signature torchchat.model.Model exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


class ExportedError(Exception):
    pass


class AOTIBackend:
    def __init__(self, path: Path, device: str = "cpu", max_seq_length: Optional[int] = None):
        if not Path(path).is_file():
            raise ExportedError(f"AOTI package not found: {path}")
        try:
            import torch._inductor

            self._runner = torch._inductor.aoti_load_package(str(path))
        except Exception as e:
            raise ExportedError(f"cannot load AOTI package {path}: {type(e).__name__}: {e}") from e
        meta = self._runner.get_metadata() if hasattr(self._runner, "get_metadata") else {}
        self.max_seq_length = int(meta.get("max_seq_length", max_seq_length or 0)) or max_seq_length
        if not self.max_seq_length:
            raise ExportedError("the AOTI package does not record max_seq_length; pass --max-seq-length")

    def __call__(self, tokens, input_pos):
        out = self._runner(tokens, input_pos)
        return out[0] if isinstance(out, (list, tuple)) else out


class PTEBackend:
    def __init__(self, path: Path, max_seq_length: Optional[int] = None):
        if not Path(path).is_file():
            raise ExportedError(f"ExecuTorch program not found: {path}")
        # The program's custom SDPA / KV-cache and quantized kernels register
        # on import; without them loading fails with "Missing operator".
        try:
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:
            pass
        from executorch.runtime import Runtime

        try:
            program = Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")
        except Exception as e:
            raise ExportedError(f"cannot load {path}: {type(e).__name__}: {e}") from e
        meta = {}
        for name in ("get_max_seq_len", "get_max_context_len"):
            try:
                meta[name] = int(program.load_method(name).execute([])[0])
            except Exception:
                pass
        self.max_seq_length = meta.get("get_max_context_len") or meta.get("get_max_seq_len") or max_seq_length
        if not self.max_seq_length:
            raise ExportedError("the .pte does not record its context length; pass --max-seq-length")

    def __call__(self, tokens, input_pos):
        out = self._method.execute([tokens, input_pos])[0]
        return out if out.dim() == 2 else out[:, -1]
