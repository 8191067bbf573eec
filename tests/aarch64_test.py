"""The aarch64 Linux build, run under QEMU user-mode emulation.

Built by //tools/aarch64's cross toolchain (Debian's gcc 12 for
aarch64-linux-gnu) against ExecuTorch's aarch64 wheel:
  * the C++ unit tests of the tokenizers, the kernels (q4 core and the
    ExecuTorch kernels, on their portable paths), the generation loop and
    the C API pass under qemu-aarch64;
  * et_run gives the same greedy ids as the x86-64 et_run on the tiny
    .pte files exported on x86-64 (fp32 XNNPACK and the quantized `mobile`
    preset): a .pte is portable;
  * so does the exact 4-bit .pte (`--quantize q4`, torchchat's kernels),
    on the aarch64 kernels' NEON path and on their scalar one;
  * the C example linked to the aarch64 libtorchchat_et.so prints the same
    text, both as Bazel links it and as an app builds it from the aarch64
    torchchat-et tarball with the cross gcc and pkg-config.
"""

import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import unittest

ARGS = dict(a.split("=", 1) for a in sys.argv[1:])
QEMU = os.path.abspath(ARGS["qemu"])
GCC = os.path.abspath(ARGS["gcc"])
X86_ET_RUN = os.path.abspath(ARGS["x86_et_run"])
TINY = os.path.dirname(os.path.abspath(ARGS["tiny"]))
TINY_Q4 = os.path.abspath(ARGS["tiny_q4"])
BIN = os.path.abspath(ARGS["aarch64_bin"])
PROMPTS = ["Hello world", "The capital of France is", "1, 2, 3,"]


def aarch64(path):
    return os.path.join(BIN, path)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    if r.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        )
    return r


def machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    return int.from_bytes(head[18:20], "little")


class Aarch64Test(unittest.TestCase):
    def test_binaries_are_aarch64(self):
        for path in ("runner/et/et_run", "tokenizers/core_test"):
            self.assertEqual(machine(aarch64(path)), 183, path)  # EM_AARCH64

    def test_unit_tests_pass_under_qemu(self):
        tests = [
            "tokenizers/utf8_test",
            "tokenizers/core_test",
            "tokenizers/api_test",
            "kernels/q4_linear_test",
            "kernels/et_q4_ops_test",
            "kernels/et_llama_ops_test",
            "runner/common/text_llm_runner_test",
            "runner/common/chat_session_test",
            "runner/common/chat_template_test",
            "runner/c_api/c_api_test",
        ]
        for t in tests:
            with self.subTest(t), tempfile.TemporaryDirectory() as tmp:
                r = run([QEMU, aarch64(t)], env=dict(os.environ, TEST_TMPDIR=tmp))
                self.assertIn("[  PASSED  ]", r.stdout)
                self.assertNotIn("[  FAILED  ]", r.stdout)

    def test_et_run_ids_equal_x86(self):
        for kind in ("", "mobile"):
            pte = os.path.join(TINY, kind, "model.pte")
            for prompt in PROMPTS:
                with (
                    self.subTest(kind=kind or "fp32", prompt=prompt),
                    tempfile.TemporaryDirectory() as tmp,
                ):
                    ids = {}
                    for name, cmd in (
                        ("x86", [X86_ET_RUN]),
                        ("aarch64", [QEMU, aarch64("runner/et/et_run")]),
                    ):
                        out = os.path.join(tmp, name + ".json")
                        run(cmd + [pte, "-i", prompt, "-n", "24", "--ids-json", out])
                        with open(out) as f:
                            ids[name] = json.load(f)["generated"]
                    self.assertGreater(len(ids["x86"]), 4)
                    self.assertEqual(ids["aarch64"], ids["x86"])

    def test_et_run_q4_ids_equal_x86(self):
        # Both sides exact (x in fp32): x86 off its int16 decode path.
        x86_env = dict(os.environ, TORCHCHAT_Q4_ISA="avx512")
        for prompt in PROMPTS:
            with tempfile.TemporaryDirectory() as tmp:
                ids = {}
                for name, cmd, env in (
                    ("x86", [X86_ET_RUN], x86_env),
                    ("neon", [QEMU, aarch64("runner/et/et_run")], os.environ),
                    (
                        "scalar",
                        [QEMU, aarch64("runner/et/et_run")],
                        dict(os.environ, TORCHCHAT_Q4_ISA="scalar"),
                    ),
                ):
                    out = os.path.join(tmp, name + ".json")
                    run(cmd + [TINY_Q4, "-i", prompt, "-n", "24", "--ids-json", out], env=env)
                    with open(out) as f:
                        ids[name] = json.load(f)["generated"]
                with self.subTest(prompt=prompt):
                    self.assertGreater(len(ids["x86"]), 4)
                    self.assertEqual(ids["neon"], ids["x86"])
                    self.assertEqual(ids["scalar"], ids["x86"])

    def test_c_library(self):
        pte = os.path.join(TINY, "model.pte")
        want = run([X86_ET_RUN, pte, "-i", PROMPTS[1], "-n", "16"]).stdout
        got = run([QEMU, aarch64("runner/c_api/generate_example"), pte, PROMPTS[1], "16"])
        self.assertEqual(got.stdout, want)
        self.assertIn('"num_generated_tokens": 16', got.stderr)

    def test_package_outside_bazel(self):
        pte = os.path.join(TINY, "model.pte")
        want = run([X86_ET_RUN, pte, "-i", PROMPTS[0], "-n", "16"]).stdout
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(aarch64("runner/c_api/torchchat-et.tar.gz")) as t:
                t.extractall(tmp, filter="tar")
            prefix = os.path.join(tmp, "torchchat-et")
            self.assertEqual(machine(os.path.join(prefix, "lib", "libexecutorch.so")), 183)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "PKG_CONFIG_PATH": os.path.join(prefix, "lib", "pkgconfig"),
            }
            flags = run(["pkg-config", "--cflags", "--libs", "torchchat-et"], env=env).stdout
            exe = os.path.join(tmp, "generate")
            run(
                [
                    GCC,
                    os.path.join(prefix, "share/torchchat/examples/generate.c"),
                    *shlex.split(flags),
                    "-o",
                    exe,
                ],
                env=env,
            )
            got = run([QEMU, exe, pte, PROMPTS[0], "16"], env=env)
        self.assertEqual(got.stdout, want)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
