#!/usr/bin/env python3
"""Writes a tiny ExecuTorch program (.pte) plus a sidecar with reference values.

Usage: make_tiny_pte.py OUT.pte [--xnnpack]
       make_tiny_pte.py OUT.pt2 --aoti

The model is forward(x, y) = linear(x) * 2 + y with x: [2, 4], y: [2, 3].

  * default     : no delegation; the program runs on the CPU operator kernels
                  (libexecutorch_kernels_optimized.so), which exercises the
                  operator registration of that library.
  * --xnnpack   : lowered with XnnpackPartitioner; the whole graph runs in the
                  XNNPACK delegate (libexecutorch_backend_xnnpack.so).
  * --aoti      : not ExecuTorch: writes an AOTInductor package of the same
                  model (torch._inductor.aoti_compile_and_package) for
                  tests/libtorch_smoke_test.cc. Needs a host C++ compiler and
                  takes ~30 s.

Besides OUT it writes OUT.expected (e.g. OUT.pte.expected), a plain-text file
the C++ tests read. One tensor per line, all float32:

    input  <rank> <d0> ... <d(rank-1)> <v0> <v1> ...
    output <rank> <d0> ... <d(rank-1)> <v0> <v1> ...

Inputs are listed in call order, outputs in return order.
"""

import argparse
import logging
import os
import sys
import warnings


def build_model():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x, y):
            return self.linear(x) * 2.0 + y

    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.linspace(-1.0, 1.0, 8, dtype=torch.float32).reshape(2, 4)
    y = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 10.0
    return model, (x, y)


def tensor_line(kind, t):
    vals = t.detach().contiguous().reshape(-1).tolist()
    parts = [kind, str(t.dim())] + [str(d) for d in t.shape]
    parts += [f"{v:.9g}" for v in vals]
    return " ".join(parts)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output .pte (or .pt2 with --aoti) path")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--xnnpack", action="store_true", help="delegate to the XNNPACK backend")
    mode.add_argument("--aoti", action="store_true", help="write an AOTInductor .pt2 instead")
    args = parser.parse_args(argv)

    # Keep a build-time genrule quiet (torchao/executorch log a lot on import).
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    import torch

    model, inputs = build_model()
    with torch.no_grad():
        expected = model(*inputs)
    outputs = expected if isinstance(expected, (tuple, list)) else (expected,)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    def write_expected():
        with open(args.out + ".expected", "w") as f:
            for t in inputs:
                f.write(tensor_line("input", t) + "\n")
            for t in outputs:
                f.write(tensor_line("output", t) + "\n")

    exported = torch.export.export(model, inputs, strict=True)

    if args.aoti:
        path = torch._inductor.aoti_compile_and_package(
            exported, package_path=os.path.abspath(args.out)
        )
        if os.path.abspath(path) != os.path.abspath(args.out):
            os.replace(path, args.out)
        write_expected()
        return 0

    from executorch.exir import to_edge_transform_and_lower

    partitioners = []
    if args.xnnpack:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )

        partitioners = [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(exported, partitioner=partitioners)
    program = edge.to_executorch()

    with open(args.out, "wb") as f:
        f.write(program.buffer)
    write_expected()

    # Sanity check that the delegation mode is what was asked for.
    delegated = any(
        n.op == "call_function" and "executorch_call_delegate" in str(n.target)
        for n in edge.exported_program().graph.nodes
    )
    if args.xnnpack and not delegated:
        print("error: --xnnpack given but nothing was delegated", file=sys.stderr)
        return 1
    if not args.xnnpack and delegated:
        print("error: unexpected delegation", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
