"""The locked environment is the one py_test runs in: CPU torch, executorch."""

import sys
import unittest


class PythonEnvTest(unittest.TestCase):
    def test_python_is_311(self):
        self.assertEqual(sys.version_info[:2], (3, 11))

    def test_torch_is_the_locked_cpu_build(self):
        import torch

        self.assertEqual(torch.__version__, "2.13.0+cpu")
        self.assertFalse(torch.cuda.is_available())
        self.assertEqual(float(torch.ones(3).sum()), 3.0)

    def test_executorch_is_the_locked_version(self):
        from importlib.metadata import version

        from executorch.exir import to_edge  # noqa: F401

        self.assertEqual(version("executorch"), "1.5.1")


if __name__ == "__main__":
    unittest.main()
