"""Pins that live in two places must agree.

The pybind11 module fetches the same wheel the Python lock pins; if one is
bumped without the other, C++ extensions and Python would disagree.
"""

import os
import re
import unittest

RUNFILES = os.environ.get("TEST_SRCDIR", "")


def runfile(*candidates):
    for c in candidates:
        p = os.path.join(RUNFILES, c)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(candidates)


def locked(lock_text, name):
    m = re.search(
        rf"^{re.escape(name)}==(\S+) \\\s+--hash=sha256:([0-9a-f]{{64}})", lock_text, re.M
    )
    if not m:
        raise AssertionError(f"{name} is not in the lock")
    return m.group(1), m.group(2)


class LockConsistencyTest(unittest.TestCase):
    def test_pybind11_module_matches_lock(self):
        with open(runfile("_main/third_party/python/requirements.lock")) as f:
            lock = f.read()
        with open(runfile("pybind11~/MODULE.bazel")) as f:
            module = f.read()
        version, sha = locked(lock, "pybind11")
        self.assertIn(f'version = "{version}"', module)
        self.assertIn(f'sha256 = "{sha}"', module)

    def test_torch_is_the_cpu_wheel(self):
        with open(runfile("_main/third_party/python/requirements.lock")) as f:
            lock = f.read()
        self.assertEqual(locked(lock, "torch")[0], "2.13.0+cpu")
        self.assertNotRegex(lock, r"(?m)^(nvidia-|triton)")

    def test_parser_rejects_missing_package(self):
        with self.assertRaises(AssertionError):
            locked("torch==1 \\\n    --hash=sha256:" + "0" * 64, "pybind11")


if __name__ == "__main__":
    unittest.main()
