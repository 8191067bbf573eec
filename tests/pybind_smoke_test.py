"""A pybind11 extension built by Bazel imports into the locked Python."""

import unittest

import pybind_smoke


class PybindSmokeTest(unittest.TestCase):
    def test_round_trip(self):
        self.assertEqual(pybind_smoke.utf8_bytes("hé"), [0x68, 0xC3, 0xA9])

    def test_type_error_is_a_python_exception(self):
        with self.assertRaises(TypeError):
            pybind_smoke.utf8_bytes(3)


if __name__ == "__main__":
    unittest.main()
