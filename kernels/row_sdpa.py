"""torchchat::row_sdpa: attention over a KV cache whose every query row is
computed alone (kernels/row_sdpa.cc), so that a row gets the same bits in a
forward of 1 id and in a forward of k ids (a speculative draft's check),
in eager and in a compiled package alike.

    y = row_sdpa(q, k_cache, v_cache, mask, slots, scale, softcap)

Importing this module loads the op library and registers the op's fake
kernel, so torch.export and AOTInductor can trace it.
"""

from __future__ import annotations

import torch

from kernels import q4  # noqa: F401  (loads libtorchchat_q4_ops.so, which holds the op)

# Runs of up to this many rows of one slot are computed one row at a time;
# longer runs (prefill chunks) go to torch's SDPA, which is faster there.
# A speculative check is the sampled id and up to 15 guesses.
MAX_ROWS = 16


@torch.library.register_fake("torchchat::row_sdpa")
def _row_sdpa_fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor | None,
    scale: float,
    softcap: float,
    max_rows: int,
) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous, as the kernel returns it


def fits(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the op runs this attention: float32 on the CPU, one batch
    row of queries, a boolean mask."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == torch.float32
        and q.dim() == 4
        and q.shape[0] == 1
        and mask is not None
        and mask.dtype == torch.bool
        and mask.dim() == 2
    )


def row_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    max_rows: int = MAX_ROWS,
) -> torch.Tensor:
    """q [1, H, T, D] over the cache k, v [S, KVH, L, D] where mask [T, L]
    is true, row t in cache row slots[t] (none: 0); [1, H, T, D]. `scale`
    defaults to 1/sqrt(D), as torch's SDPA; `softcap` caps the scores."""
    s = scale if scale is not None else 1.0 / float(q.shape[-1]) ** 0.5
    return torch.ops.torchchat.row_sdpa.default(
        q, k, v, mask, slots, float(s), float(softcap or 0.0), max_rows
    )
