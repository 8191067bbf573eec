"""The linears of a SmolLM2-135M decode step (30 layers x q, k, v, o, gate,
up, down, plus the 49152x576 output layer), as one model: fp32 nn.Linear vs
torchchat::q4_linear (and q8_linear for the output, GGUF's Q8_0), eager and
AOTInductor (proxy executor and C shim), at M=1. Attention is left out: this
times the part the kernels replace.

    tools/bazel run -c opt //kernels:q4_model_bench -- [--threads 1 2] [--layers 30]
"""

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from kernels import q4

DIM, HIDDEN, KV, VOCAB = 576, 1536, 192, 49152


def q4_like(lin: nn.Linear, g: torch.Generator) -> q4.Q4Linear:
    n, k = lin.weight.shape
    nb = k // 32
    d = (torch.rand(n, nb, generator=g) * 0.004).half().float()
    m = (-7.5 * d).half().float()
    q = torch.randint(0, 16, (n, k), generator=g)
    out = q4.Q4Linear.from_dqm(d, m, q)
    lin.weight.data.copy_(out.dequantized())  # the fp32 twin computes the same thing
    return out


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (
            nn.Linear(DIM, DIM, bias=False),
            nn.Linear(DIM, KV, bias=False),
            nn.Linear(DIM, KV, bias=False),
            nn.Linear(DIM, DIM, bias=False),
        )
        self.w1, self.w3, self.w2 = (
            nn.Linear(DIM, HIDDEN, bias=False),
            nn.Linear(DIM, HIDDEN, bias=False),
            nn.Linear(HIDDEN, DIM, bias=False),
        )

    def forward(self, x):
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        h = x + self.wo(q) + 1e-3 * (k.sum(-1, keepdim=True) + v.sum(-1, keepdim=True))
        return h + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Stack(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(layers))
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, x):
        for layer in self.layers:
            x = F.rms_norm(layer(x), (DIM,))
        return self.output(x)


def quantized_copy(model: Stack, g) -> Stack:
    import copy

    qm = copy.deepcopy(model)
    for layer in qm.layers:
        for name, child in list(layer.named_children()):
            setattr(layer, name, q4_like(child, g))
    q8s = (torch.rand(VOCAB, DIM // 32, generator=g) * 0.001).half()
    qm.output = q4.Q8Linear(
        torch.randint(-128, 128, (VOCAB, DIM), generator=g, dtype=torch.int8), q8s
    )
    model.output.weight.data.copy_(qm.output.dequantized())
    # Copy the (now exactly representable) weights back so both compute the same.
    for lq, lf in zip(qm.layers, model.layers):
        for name, child in lq.named_children():
            getattr(lf, name).weight.data.copy_(child.dequantized())
    return qm


def bench(fn, x, iters):
    for _ in range(5):
        fn(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    fp = Stack(args.layers).eval()
    qm = quantized_copy(fp, g).eval()
    x = torch.randn(1, DIM)
    with torch.inference_mode():
        ref = fp(x)
        torch.testing.assert_close(qm(x), ref, rtol=1e-3, atol=1e-3)
    q4_bytes = sum(b.numel() * b.element_size() for b in qm.buffers())
    f_bytes = sum(p.numel() * 4 for p in fp.parameters())
    runs = {"fp32 eager": fp, "q4 eager": qm}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, cfg in [
            ("fp32 aoti", fp, {}),
            ("q4 aoti proxy", qm, {}),
            ("q4 aoti c-shim", qm, q4.aoti_c_shim_configs()),
        ]:
            ep = torch.export.export(model, (x,))
            path = os.path.join(tmp, name.replace(" ", "_") + ".pt2")
            t0 = time.perf_counter()
            pkg = torch._inductor.aoti_compile_and_package(
                ep, package_path=path, inductor_configs=cfg
            )
            print(f"compiled {name} in {time.perf_counter() - t0:.0f} s")
            runs[name] = torch._inductor.aoti_load_package(pkg)
        print(
            f"weights: fp32 {f_bytes / 1e6:.0f} MB, q4 {q4_bytes / 1e6:.0f} MB; {args.layers} layers, "
            f"{7 * args.layers} linears + output, M=1"
        )
        print(f"{'threads':>7} {'variant':>16} {'ms/step':>8} {'GB/s':>6} {'steps/s':>8}")
        for t in args.threads:
            torch.set_num_threads(t)
            with torch.inference_mode():
                for name, fn in runs.items():
                    torch.testing.assert_close(fn(x), ref, rtol=1e-3, atol=1e-3)
                    s = bench(fn, x, args.iters)
                    nbytes = q4_bytes if name.startswith("q4") else f_bytes
                    print(f"{t:>7} {name:>16} {s * 1e3:8.2f} {nbytes / s / 1e9:6.1f} {1 / s:8.1f}")


if __name__ == "__main__":
    main()
