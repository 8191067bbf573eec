"""Import torchtune with the torchao this repo pins.

torchtune 0.6.1 imports `torchao.dtypes.nf4tensor`, which torchao 0.18 moved
to `torchao.quantization.quantize_.workflows.nf4.nf4_tensor` (same names:
NF4Tensor, to_nf4, linear_nf4, implements). ExecuTorch's
extension/llm/modules imports torchtune too, so this must run before either.
It is the one place that knows about the move: import `torchchat.compat`
first, or use `import_torchtune()`.

`torchtune.training` stays broken (it needs torchao names that 0.18 removed,
such as int4_weight_only); nothing in torchchat imports it.
"""

import importlib
import sys
from types import ModuleType

_OLD = "torchao.dtypes.nf4tensor"
_NEW = "torchao.quantization.quantize_.workflows.nf4.nf4_tensor"


def install() -> None:
    """Aliases the old module path to the new one; idempotent."""
    if _OLD in sys.modules:
        return
    try:
        importlib.import_module(_OLD)
        return  # an older torchao that still has it
    except ImportError:
        pass
    new = importlib.import_module(_NEW)
    sys.modules[_OLD] = new
    import torchao.dtypes

    torchao.dtypes.nf4tensor = new


def import_torchtune(name: str = "torchtune") -> ModuleType:
    install()
    return importlib.import_module(name)


install()
