import os
import tempfile
import unittest

from torchchat.atomic import OutputPathError, atomic_output


class AtomicOutputTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.target = os.path.join(self.dir, "model.pte")

    def test_success_renames_into_place(self):
        with atomic_output(self.target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"pte")
        with open(self.target, "rb") as f:
            self.assertEqual(f.read(), b"pte")
        self.assertEqual(os.listdir(self.dir), ["model.pte"])

    def test_interruption_leaves_nothing(self):
        with self.assertRaises(KeyboardInterrupt):
            with atomic_output(self.target) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"half a")
                raise KeyboardInterrupt
        self.assertEqual(os.listdir(self.dir), [])

    def test_interruption_keeps_previous_artifact(self):
        with open(self.target, "wb") as f:
            f.write(b"old")
        with self.assertRaises(RuntimeError):
            with atomic_output(self.target) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"new")
                raise RuntimeError("lowering failed")
        with open(self.target, "rb") as f:
            self.assertEqual(f.read(), b"old")

    def test_written_file_gets_umask_mode(self):
        old = os.umask(0o022)
        try:
            with atomic_output(self.target) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"pte")
        finally:
            os.umask(old)
        self.assertEqual(os.stat(self.target).st_mode & 0o777, 0o644)

    def test_missing_directory_is_a_clear_error(self):
        with self.assertRaisesRegex(OutputPathError, "does not exist"):
            with atomic_output(os.path.join(self.dir, "nope", "m.pte")):
                pass

    def test_directory_as_target_is_a_clear_error(self):
        with self.assertRaisesRegex(OutputPathError, "is a directory"):
            with atomic_output(self.dir):
                pass


if __name__ == "__main__":
    unittest.main()
