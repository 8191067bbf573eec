"""torchtune and ExecuTorch's torchtune-based modules import via compat."""

import importlib
import subprocess
import sys
import unittest


class CompatTest(unittest.TestCase):
    def test_torchtune_fails_without_compat(self):
        # Proves the shim is needed: a clean interpreter cannot import it.
        r = subprocess.run(
            [sys.executable, "-c", "import torchtune.models.llama3_2"],
            capture_output=True,
            text=True,
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nf4tensor", r.stderr)

    def test_torchtune_imports_with_compat(self):
        from torchchat import compat

        llama3_2 = compat.import_torchtune("torchtune.models.llama3_2")
        self.assertTrue(hasattr(llama3_2, "llama3_2_1b"))
        nf4 = importlib.import_module("torchao.dtypes.nf4tensor")
        self.assertTrue(hasattr(nf4, "NF4Tensor"))

    def test_executorch_private_apis_are_where_we_call_them(self):
        from torchchat import executorch_compat

        found = executorch_compat.check()
        self.assertEqual(len(found), len(executorch_compat.APIS))
        self.assertIn(
            "executorch.examples.models.llama.export_llama_lib._get_source_transforms", found
        )

    def test_a_moved_api_fails_with_its_name(self):
        from torchchat import executorch_compat

        with self.assertRaisesRegex(ImportError, "no longer has executorch.runtime.nope"):
            executorch_compat._get("executorch.runtime", "nope")

    def test_install_is_idempotent(self):
        from torchchat import compat

        compat.install()
        compat.install()
        self.assertIs(sys.modules["torchao.dtypes.nf4tensor"], importlib.import_module(compat._NEW))


if __name__ == "__main__":
    unittest.main()
