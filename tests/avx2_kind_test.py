"""The x86-64 kernels on a CPU with AVX2 and nothing newer, under QEMU.

Machines of the AVX2-only kind (AMD Zen 1-3, Intel before Ice Lake) must
never meet an AVX-512 instruction. qemu-x86_64 with `-cpu Haswell` (AVX2,
FMA, F16C; no AVX-512) runs the kernels' own C++ tests: cpuid there picks
the AVX2 paths, any AVX-512 instruction outside a path that checked for it
is a SIGILL, and each test's results must still hold. `-cpu Nehalem` (no
AVX) runs them on the scalar paths.
"""

import os
import subprocess
import sys
import unittest

ARGS = dict(a.split("=", 1) for a in sys.argv[1:])
QEMU = os.path.abspath(ARGS["qemu"])
TESTS = [os.path.abspath(p) for p in ARGS["tests"].split(",")]


def run(cpu: str, test: str, isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TORCHCHAT_EXPECT_GGML_ISA=isa)
    return subprocess.run(
        [QEMU, "-cpu", cpu, test], capture_output=True, text=True, timeout=900, env=env
    )


class Avx2KindTest(unittest.TestCase):
    def check(self, cpu: str, isa: str) -> None:
        for test in TESTS:
            with self.subTest(test=os.path.basename(test)):
                r = run(cpu, test, isa)
                self.assertEqual(
                    r.returncode,
                    0,
                    f"{test} on -cpu {cpu}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}",
                )

    def test_avx2_only(self):
        self.check("Haswell", "avx2")

    def test_no_avx(self):
        self.check("Nehalem", "scalar")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
