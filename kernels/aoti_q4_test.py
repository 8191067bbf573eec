"""torch.export + AOTInductor with torchchat::q4_linear, run from Python and
from a C++ process (//kernels:aoti_q4_run, which links the op library)."""

import os
import subprocess
import tempfile
import unittest
import zipfile

import numpy as np
import torch

from kernels import q4


def write_matrix(path, t):
    with open(path, "wb") as f:
        f.write(f"{t.shape[0]} {t.shape[1]}\n".encode())
        f.write(t.contiguous().float().numpy().tobytes())


def read_matrix(path):
    with open(path, "rb") as f:
        r, c = (int(v) for v in f.readline().split())
        return torch.from_numpy(np.frombuffer(f.read(), dtype=np.float32).reshape(r, c).copy())


def layer(n, k, seed, bias):
    g = torch.Generator().manual_seed(seed)
    nb = q4.num_blocks(k)
    q = torch.randint(0, 16, (n, k), generator=g)
    d = (torch.rand(n, nb, generator=g) * 0.05).half().float()
    m = (torch.randn(n, nb, generator=g) * 0.2).half().float()
    return q4.Q4Linear.from_dqm(d, m, q, torch.randn(n, generator=g) if bias else None)


class AotiQ4Test(unittest.TestCase):
    def test_proxy_executor_package_runs_in_python_and_cpp(self):
        self.check_package({}, expect_shim=False)

    def test_c_shim_package_runs_in_python_and_cpp(self):
        self.check_package(q4.aoti_c_shim_configs(), expect_shim=True)

    def check_package(self, configs, expect_shim):
        g = torch.Generator().manual_seed(2)
        q8 = q4.Q8Linear(
            torch.randint(-128, 128, (24, 64), generator=g, dtype=torch.int8),
            (torch.rand(24, 2, generator=g) * 0.01).half(),
        )
        model = torch.nn.Sequential(
            layer(96, 64, 0, True), torch.nn.SiLU(), layer(64, 96, 1, False), q8
        ).eval()
        x = torch.randn(5, 64)
        want = model(x)
        rows = torch.export.Dim("rows", min=1, max=64)
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: rows},))
        with tempfile.TemporaryDirectory() as tmp:
            pkg = torch._inductor.aoti_compile_and_package(
                ep, package_path=os.path.join(tmp, "q4.pt2"), inductor_configs=configs
            )
            with zipfile.ZipFile(pkg) as z:
                src = "".join(z.read(f).decode() for f in z.namelist() if f.endswith("wrapper.cpp"))
            self.assertEqual("aoti_torch_cpu_q4_linear(" in src, expect_shim)
            self.assertEqual("aoti_torch_cpu_q8_linear(" in src, expect_shim)
            self.assertEqual("proxy_executor_call_function" in src, not expect_shim)
            runner = torch._inductor.aoti_load_package(pkg)
            torch.testing.assert_close(runner(x), want, rtol=1e-5, atol=1e-5)
            x3 = torch.randn(3, 64)
            torch.testing.assert_close(runner(x3), model(x3), rtol=1e-5, atol=1e-5)

            write_matrix(os.path.join(tmp, "x"), x)
            proc = subprocess.run(
                [
                    os.path.join("kernels", "aoti_q4_run"),
                    pkg,
                    os.path.join(tmp, "x"),
                    os.path.join(tmp, "y"),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            torch.testing.assert_close(
                read_matrix(os.path.join(tmp, "y")), want, rtol=1e-5, atol=1e-5
            )

            # A bad package path is one clear error line, not a crash.
            bad = subprocess.run(
                [
                    os.path.join("kernels", "aoti_q4_run"),
                    os.path.join(tmp, "missing.pt2"),
                    os.path.join(tmp, "x"),
                    os.path.join(tmp, "y"),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertNotEqual(bad.returncode, 0)
            self.assertTrue(bad.stderr.startswith("error: "), bad.stderr)
            self.assertEqual(len(bad.stderr.strip().splitlines()), 1, bad.stderr)


if __name__ == "__main__":
    unittest.main()
