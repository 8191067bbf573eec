"""AOTInductor: compile a Model into a .pt2 package, and run one.

export_llm writes .pt2 packages for aoti_run with `compile_package`, and the
CLI compiles its decode step with it on first use (torchchat.compile_cache).
`Runner` calls a package through torch's C++ loader directly:
`torch._inductor.aoti_load_package` would do the same after importing
torch._inductor, which pulls in dynamo and costs about a second of every
start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchchat.atomic import atomic_output

if TYPE_CHECKING:
    from torchchat.model import Model
    from torchchat.slots import SlotModel


def compile_package(
    model: Model | SlotModel,
    out_path: Path,
    metadata: dict[str, str],
    on_stage: Callable[[str], None] | None = None,
    external_weights: bool = False,
    encoder: tuple[torch.nn.Module, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Exports `model` with a dynamic token dimension and writes its package.

    With `external_weights` the package holds code only: whoever runs it
    hands it the weights (`Runner(path, constants)`), so a model read in
    place from a GGUF is never copied into the package. Returns the
    constants the package needs that are not the model's own parameters or
    buffers (tensors export lifted out of the code), for the caller to keep.

    forward(tokens[1, T], input_pos[T]) for 1 <= T < max_seq_length, or for
    a traceable SlotModel forward(tokens[1, T], input_pos[T], slots[T],
    last[E]) with 1 <= E <= T's bound (a slot may ask for every one of its
    tokens' logits: speculative decoding verifies a draft so). The write is atomic, so an
    interrupted compile leaves nothing at `out_path`. `on_stage` hears
    "export" and then "compile" as each starts.

    With `encoder` (a vision tower and example pixels), `model` is
    forward(tokens[1, T], input_pos[T], embeds[1, T, model.dim],
    is_image[1]) (export.vision_pt2) and the encoder goes into the same
    package as a second model, `vision_encoder`.
    """
    import torch._inductor

    stage = on_stage or (lambda name: None)
    stage("export")
    max_seq_length = int(model.max_seq_length)
    n_slots = int(getattr(model, "n_slots", 0))
    # With slots, every slot may hand in a chunk in the same step.
    T = torch.export.Dim("T", min=1, max=n_slots * max_seq_length or max_seq_length - 1)
    n = min(3, max_seq_length - 1)
    example: tuple = (torch.arange(1, n + 1, dtype=torch.long)[None], torch.arange(n))
    dynamic: tuple = ({1: T}, {0: T})
    if n_slots:
        # Two entries, so that neither dimension is specialized to 1: slot 0
        # holds the first n - 1 tokens, slot 1 the last (with one slot, the
        # last two logits of one sequence).
        other = 1 if n_slots > 1 else 0
        last_pos = 0 if other else n - 1
        example = (example[0], torch.tensor([*range(n - 1), last_pos]))
        example += (torch.tensor([0] * (n - 1) + [other]), torch.tensor([n - 2, n - 1]))
        E = torch.export.Dim("E", min=1, max=n_slots * max_seq_length)
        dynamic += ({0: T}, {0: E})
    frozen = freeze_constants(model)
    if encoder is not None:
        with torch.no_grad():
            dim = encoder[0](encoder[1]).shape[-1]
        example += (torch.zeros(1, n, dim), torch.zeros(1, dtype=torch.long))
        dynamic += ({1: T}, None)
    with torch.no_grad():
        ep = torch.export.export(model, example, dynamic_shapes=dynamic, strict=False)
        programs = {"model": ep}
        if encoder is not None:
            programs["vision_encoder"] = torch.export.export(
                encoder[0], (encoder[1],), strict=False
            )
    written = set(ep.graph_signature.buffers_to_mutate.values())
    if written & frozen:
        raise RuntimeError(f"the forward writes {sorted(written & frozen)[:3]}: not a KV cache")
    stage("compile")
    parent = Path(out_path).resolve().parent
    with atomic_output(str(out_path)) as tmp:
        # aoti_compile_and_package insists on a .pt2 name, so compile in a
        # private directory beside the target and rename from there.
        work = tempfile.mkdtemp(prefix=".aoti.", dir=parent)
        try:
            configs: dict[str, Any] = {"aot_inductor.metadata": metadata}
            if external_weights:
                configs["aot_inductor.package_constants_in_so"] = False
            pkg = os.path.join(work, "model.pt2")
            if len(programs) == 1:
                torch._inductor.aoti_compile_and_package(
                    ep, package_path=pkg, inductor_configs=configs
                )
            else:
                _package_models(programs, pkg, configs)
            os.replace(pkg, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not external_weights:
        return {}
    own = module_constants(model)
    return {k: v for k, v in ep.constants.items() if k not in own}


def freeze_constants(model: torch.nn.Module) -> set[str]:
    """Re-registers every buffer but the KV caches as a frozen Parameter (the
    same tensor, in place), and returns their names.

    AOTInductor copies each buffer of the graph before compiling, because a
    buffer may be written (torch/_inductor/compile_fx.py, _unlift_graph);
    parameters it takes as they are. Our weights are buffers (GGUF blocks are
    not trainable), so without this the first run held the whole model twice:
    an 8B Q4_K_M peaked at 10.8 GB against 5.3 GB warm. The KV caches are
    the only tensors the forward writes; they stay buffers and are copied."""
    frozen: set[str] = set()
    made: dict[int, torch.nn.Parameter] = {}  # a tied tensor stays one object
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for name, buf in list(mod.named_buffers(recurse=False)):
            if name in ("k_cache", "v_cache"):
                continue
            param = made.setdefault(id(buf), torch.nn.Parameter(buf, requires_grad=False))
            delattr(mod, name)
            mod.register_parameter(name, param)
            frozen.add(f"{mod_name}.{name}" if mod_name else name)
    return frozen


def _package_models(
    programs: dict[str, torch.export.ExportedProgram], path: str, configs: dict[str, Any]
) -> None:
    """Several exported programs compiled into one package, each under its
    name (what aoti_compile_and_package does for one)."""
    import torch._inductor
    from torch._inductor.package import package_aoti

    files: dict[str, Any] = {}
    for name, ep in programs.items():
        args, kwargs = ep.example_inputs
        files[name] = torch._inductor.aot_compile(
            ep.module(check_guards=False),
            args,
            kwargs,
            options=dict(configs, **{"aot_inductor.package": True}),
        )
    package_aoti(path, files)


def module_constants(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name, as export names them (a
    tensor shared by two modules under both names)."""
    out: dict[str, torch.Tensor] = {}
    out.update(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


class Runner:
    """A loaded package's forward: (tokens, input_pos[, slots, last]) -> its
    outputs; or the forward of another `model` in it (a vision package's
    vision_encoder).

    A package compiled with external weights runs on `constants` (every name
    get_constant_fqns() lists), used in place: the caller keeps them alive,
    and the KV cache among them is written where it lies."""

    def __init__(
        self,
        path: Path,
        constants: dict[str, torch.Tensor] | None = None,
        model: str = "model",
    ):
        self._loader = torch._C._aoti.AOTIModelPackageLoader(str(path), model, False, 1, -1)
        if constants is not None:
            need = self._loader.get_constant_fqns()
            missing = [k for k in need if k not in constants]
            if missing:
                raise KeyError(f"no weights for {', '.join(missing[:5])}")
            self._constants = {k: constants[k] for k in need}
            self._loader.load_constants(self._constants, False, True, True)

    def __call__(self, *inputs: torch.Tensor) -> list[Any]:
        return self._loader.boxed_run(list(inputs))
