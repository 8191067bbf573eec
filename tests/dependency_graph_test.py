"""aoti_run never depends on ExecuTorch; et_run never on libtorch. The same
for the C API's libraries: libtorchchat_aoti.so and libtorchchat_et.so.

Checked twice: in the build graph (an aspect's manifest, i.e.
`bazel query deps(...)`) and in the linked binary (`ldd`). Each check is
also run on :bad_runner, which links both, and must flag it.
"""

import os
import unittest

from tools.deps import check_deps

RUNFILES = os.path.join(os.environ["TEST_SRCDIR"], "_main")

EXECUTORCH_REPOS = {"executorch"}
LIBTORCH_REPOS = {"libtorch", "pyenv"}
EXECUTORCH_LIBS = ["libexecutorch"]
LIBTORCH_LIBS = ["libtorch", "libc10", "libgomp"]


def manifest(name):
    with open(os.path.join(RUNFILES, "tests", name + ".deps")) as f:
        return f.read().split()


def binary(path):
    return os.path.join(RUNFILES, path)


class GraphTest(unittest.TestCase):
    def test_aoti_run_has_no_executorch_target(self):
        labels = manifest("aoti_run_manifest")
        self.assertIn("//runner/aoti:aoti_run", " ".join(labels))
        self.assertTrue(any(check_deps.repo_of(x) == "libtorch" for x in labels))
        self.assertEqual(check_deps.graph_violations(labels, EXECUTORCH_REPOS), [])

    def test_et_run_has_no_libtorch_target(self):
        labels = manifest("et_run_manifest")
        self.assertTrue(any(check_deps.repo_of(x) == "executorch" for x in labels))
        self.assertEqual(check_deps.graph_violations(labels, LIBTORCH_REPOS), [])

    def test_aoti_library_has_no_executorch_target(self):
        labels = manifest("libtorchchat_aoti_manifest")
        self.assertIn("//runner/c_api:torchchat_aoti", " ".join(labels))
        self.assertTrue(any(check_deps.repo_of(x) == "libtorch" for x in labels))
        self.assertEqual(check_deps.graph_violations(labels, EXECUTORCH_REPOS), [])

    def test_et_library_has_no_libtorch_target(self):
        labels = manifest("libtorchchat_et_manifest")
        self.assertTrue(any(check_deps.repo_of(x) == "executorch" for x in labels))
        self.assertEqual(check_deps.graph_violations(labels, LIBTORCH_REPOS), [])

    def test_bad_runner_is_flagged_both_ways(self):
        labels = manifest("bad_runner_manifest")
        self.assertNotEqual(check_deps.graph_violations(labels, EXECUTORCH_REPOS), [])
        self.assertNotEqual(check_deps.graph_violations(labels, LIBTORCH_REPOS), [])

    def test_repo_of(self):
        self.assertEqual(
            check_deps.repo_of("@@_main~_repo_rules~executorch//:runtime"), "executorch"
        )
        self.assertEqual(check_deps.repo_of("@@re2~//:re2"), "re2")
        self.assertEqual(check_deps.repo_of("//runner/et:et_run"), "")
        self.assertEqual(check_deps.repo_of("@//runner/et:et_run"), "")


class LinkTest(unittest.TestCase):
    def test_aoti_run_loads_no_executorch_library(self):
        objs = check_deps.linked_objects(binary("runner/aoti/aoti_run"))
        self.assertTrue(any(o.startswith("libtorch_cpu") for o in objs), objs)
        self.assertEqual(check_deps.link_violations(objs, EXECUTORCH_LIBS), [])

    def test_et_run_loads_no_libtorch_library(self):
        objs = check_deps.linked_objects(binary("runner/et/et_run"))
        self.assertTrue(any(o.startswith("libexecutorch") for o in objs), objs)
        self.assertEqual(check_deps.link_violations(objs, LIBTORCH_LIBS), [])

    def test_aoti_library_loads_no_executorch_library(self):
        objs = check_deps.linked_objects(binary("runner/c_api/libtorchchat_aoti.so.1"))
        self.assertTrue(any(o.startswith("libtorch_cpu") for o in objs), objs)
        self.assertEqual(check_deps.link_violations(objs, EXECUTORCH_LIBS), [])

    def test_et_library_loads_no_libtorch_library(self):
        objs = check_deps.linked_objects(binary("runner/c_api/libtorchchat_et.so.1"))
        self.assertTrue(any(o.startswith("libexecutorch") for o in objs), objs)
        self.assertEqual(check_deps.link_violations(objs, LIBTORCH_LIBS), [])

    def test_bad_runner_is_flagged_both_ways(self):
        objs = check_deps.linked_objects(binary("tests/bad_runner"))
        self.assertNotEqual(check_deps.link_violations(objs, EXECUTORCH_LIBS), [])
        self.assertNotEqual(check_deps.link_violations(objs, LIBTORCH_LIBS), [])


if __name__ == "__main__":
    unittest.main()
