"""torchchat's ExecuTorch kernels (libtorchchat_et_ops.so) in a Python process.

A .pte exported with linear:int4 runs torchchat::q4_linear.out and
q8_linear.out (kernels/et_q4_ops.cc). et_run links them; ExecuTorch's Python
runtime gets them by loading this library into the process after the
runtime itself, so that they register in the runtime's own registry (both
use the executorch wheel's libexecutorch.so, matched by SONAME).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

LIB_NAME = "libtorchchat_et_ops.so"
# What a .pte records (a metadata method) when it needs this library; the
# value is the kernel ABI version its ops follow.
METADATA_METHOD = "torchchat_ops_version"
# 2 added torchchat::ggml_linear and ggml_embedding (a GGUF's own formats).
OPS_VERSION = 2
OPS = (
    "torchchat::q4_linear.out",
    "torchchat::q8_linear.out",
    "torchchat::ggml_linear.out",
    "torchchat::ggml_embedding.out",
)

_lib: ctypes.CDLL | None = None


class EtOpsError(RuntimeError):
    pass


def library_path() -> Path:
    """$TORCHCHAT_ET_OPS_LIB, or the file next to this module (see q4.library_path)."""
    env = os.environ.get("TORCHCHAT_ET_OPS_LIB")
    return Path(env) if env else Path(os.path.abspath(__file__)).with_name(LIB_NAME)


def load() -> ctypes.CDLL:
    """Registers the kernels with ExecuTorch's runtime in this process (once)."""
    global _lib
    if _lib is not None:
        return _lib
    # The runtime first: the library must bind to the libexecutorch.so that
    # the Python runtime uses, not load a second copy with its own registry.
    import executorch.runtime  # noqa: F401

    path = library_path()
    if not path.is_file():
        raise EtOpsError(f"{LIB_NAME} not found at {path} (build //kernels:{LIB_NAME})")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise EtOpsError(f"cannot load {path}: {e}") from e
    lib.torchchat_et_q4_isa.restype = ctypes.c_char_p
    lib.torchchat_et_q4_force_isa.argtypes = [ctypes.c_char_p]
    _lib = lib
    return lib


def isa() -> str:
    """The q4 kernel path this library's copy of the core runs."""
    return load().torchchat_et_q4_isa().decode()


def force_isa(name: str) -> bool:
    """Forces a kernel path ("" = the default); False if this CPU cannot run it."""
    return bool(load().torchchat_et_q4_force_isa(name.encode()))
