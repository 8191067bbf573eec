"""The torchchat-et tarball, used the way an application outside Bazel uses
it: unpack it anywhere, build the C example with plain `cc` and pkg-config,
and again with CMake's find_package, then run both on the tiny .pte. Their
text must equal et_run's; a corrupt .pte must give one error line."""

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest

TARBALL, PTE, ET_RUN = (os.path.abspath(a) for a in sys.argv[1:4])
PROMPT = "Hello world"


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


class DistTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Outside the runfiles tree and with a space in the path, as a user's
        # download directory might be.
        cls.tmp = tempfile.mkdtemp(prefix="torchchat dist ", dir=os.environ.get("TEST_TMPDIR"))
        with tarfile.open(TARBALL) as t:
            t.extractall(cls.tmp, filter="tar")
        cls.prefix = os.path.join(cls.tmp, "torchchat-et")
        cls.examples = os.path.join(cls.prefix, "share", "torchchat", "examples")
        # The model alone in a directory with its tokenizer files.
        cls.model_dir = os.path.join(cls.tmp, "model")
        os.makedirs(cls.model_dir)
        for name in ("model.pte", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(os.path.dirname(PTE), name), cls.model_dir)
        cls.want = run([ET_RUN, PTE, "-i", PROMPT, "-n", "16"]).stdout

    def env(self):
        # Nothing of Bazel's: only what a shell on this machine has.
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.tmp,
            "PKG_CONFIG_PATH": os.path.join(self.prefix, "lib", "pkgconfig"),
        }

    def check_program(self, exe):
        model = os.path.join(self.model_dir, "model.pte")
        r = run([exe, model, PROMPT, "16"], env=self.env())
        self.assertEqual(r.stdout, self.want)
        self.assertIn('"num_generated_tokens": 16', r.stderr)

        corrupt = os.path.join(self.tmp, "corrupt.pte")
        with open(model, "rb") as f:
            data = f.read()
        with open(corrupt, "wb") as f:
            f.write(data[:1000])
        r = subprocess.run(
            [exe, corrupt, PROMPT], capture_output=True, text=True, env=self.env(), timeout=60
        )
        self.assertEqual(r.returncode, 1)
        lines = [x for x in r.stderr.splitlines() if x.startswith("generate: ")]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("cannot load", lines[0])

    def test_pkg_config_and_cc(self):
        # pkg-config escapes the space in the prefix for a shell's eval.
        flags = run(["pkg-config", "--cflags", "--libs", "torchchat-et"], env=self.env())
        exe = os.path.join(self.tmp, "generate_cc")
        run(
            [
                "cc",
                "-std=c99",
                "-Wall",
                "-Werror",
                os.path.join(self.examples, "generate.c"),
                *shlex.split(flags.stdout),
                "-o",
                exe,
            ],
            env=self.env(),
        )
        self.check_program(exe)

    def test_cmake_find_package(self):
        build = os.path.join(self.tmp, "build")
        run(
            ["cmake", "-S", self.examples, "-B", build, f"-DCMAKE_PREFIX_PATH={self.prefix}"],
            env=self.env(),
        )
        run(["cmake", "--build", build], env=self.env())
        self.check_program(os.path.join(build, "generate"))

    def test_layout(self):
        with tarfile.open(TARBALL) as t:
            names = set(t.getnames())
        for want in (
            "include/torchchat.h",
            "lib/libtorchchat_et.so",
            "lib/libtorchchat_et.so.1",
            "lib/libexecutorch.so",
            "lib/libexecutorch_backend_xnnpack.so",
            "lib/pkgconfig/torchchat-et.pc",
            "lib/cmake/torchchat_et/torchchat_et-config.cmake",
        ):
            self.assertIn("torchchat-et/" + want, names)
        # Never libtorch, never a library nothing needs.
        self.assertFalse([n for n in names if "torch_cpu" in n or "c10" in n or "qnn" in n])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
