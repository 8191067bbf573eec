"""Eager decode GEMV timings for SmolLM2-135M's linear shapes, one process:
torchchat::q4_linear vs nn.Linear fp32 vs torch's int4pack (fp32 and bf16
activations). Weights rotate over copies totalling --mb MB per kernel, so
the timings are memory-bound like a real decode step.

    tools/bazel run -c opt //kernels:q4_torch_bench -- [--threads 1 2] [--mb 128] [--m 1]
"""

import argparse
import time

import torch
import torch.nn.functional as F

from kernels import q4

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]


def timeit(fns, x, iters):
    for f in fns:
        f(x)
    t0 = time.perf_counter()
    for i in range(iters):
        fns[i % len(fns)](x)
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mb", type=float, default=128)
    ap.add_argument("--m", type=int, default=1, help="rows of x (1 = decode)")
    ap.add_argument("--iters", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, M={args.m}, weights rotate over ~{args.mb:.0f} MB per kernel"
    )
    print(
        f"{'thr':>3} {'N x K':>10} | {'q4 us':>7} {'GB/s':>6} | {'fp32 us':>7} {'GB/s':>6} | "
        f"{'i4p f32':>7} | {'i4p bf16':>8} | {'vs fp32':>7} {'vs i4p':>7}"
    )
    for n, k in SHAPES:
        nb = k // 32
        q4_bytes = n * nb * 20
        f_bytes = n * k * 4
        cq = max(1, int(args.mb * 1e6 / q4_bytes))
        cf = max(1, int(args.mb * 1e6 / f_bytes))
        q = torch.randint(0, 16, (n, k))
        d = (torch.rand(n, nb) * 0.02).half().float()
        m = (torch.randn(n, nb) * 0.1).half().float()
        base = q4.Q4Linear.from_dqm(d, m, q)
        q4_mods = [q4.Q4Linear(base.qs.clone(), base.scales.clone(), k, n) for _ in range(cq)]
        w = base.dequantized()
        # Modules on both sides: the same Python call overhead as a drop-in.
        lins = []
        for _ in range(cf):
            lin = torch.nn.Linear(k, n, bias=False)
            lin.weight.data.copy_(w)
            lins.append(lin)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        sz = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous()
        ci = max(1, int(args.mb * 1e6 / (packed.numel() * packed.element_size() + sz.numel() * 4)))
        i4 = [(packed.clone(), sz.clone()) for _ in range(ci)]
        i4b = [(p, s.bfloat16()) for p, s in i4]
        x = torch.randn(args.m, k)
        xb = x.bfloat16()
        # Same answer from all three before timing anything.
        ref = F.linear(x, w)
        with q4.using_isa(q4.exact_isa()):
            torch.testing.assert_close(q4_mods[0](x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz), ref, rtol=1e-4, atol=1e-4
        )
        for t in args.threads:
            torch.set_num_threads(t)
            with torch.inference_mode():
                tq = timeit(q4_mods, x, args.iters)
                tf = timeit(lins, x, args.iters)
                ti = timeit(
                    [
                        lambda x, p=p, s=s: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 32, s)
                        for p, s in i4
                    ],
                    x,
                    max(20, args.iters // 10),
                )
                tib = timeit(
                    [
                        lambda x, p=p, s=s: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 32, s)
                        for p, s in i4b
                    ],
                    xb,
                    args.iters,
                )
            print(
                f"{t:>3} {f'{n}x{k}':>10} | {tq * 1e6:7.1f} {q4_bytes / tq / 1e9:6.2f} | "
                f"{tf * 1e6:7.1f} {f_bytes / tf / 1e9:6.2f} | {ti * 1e6:7.1f} | {tib * 1e6:8.1f} | "
                f"{tf / tq:6.2f}x {ti / tq:6.2f}x"
            )


if __name__ == "__main__":
    main()
