"""Python imports point one way: down the house, never up or sideways.

Each first-party folder has a floor (FLOORS). A library module may import
its own folder and folders on lower floors only; two folders on one floor
never import each other; and no library module imports the test-only
folders. Tests (`*_test.py`) and the test-only folders
(testing/, tests/) may import anything. The C++ side has
dependency_graph_test for the runners' boundary.

The modules checked are the runfiles of the user-facing binaries (the data
of this test), so every library file a user can reach is read.
"""

from __future__ import annotations

import ast
import os
import tempfile
import unittest
from collections.abc import Iterator
from pathlib import Path

# Lowest first. kernels and tokenizers' bindings (llm_tokenizers) are the
# ground; torchchat is the library; peers builds what we measure against;
# export, evals and the server are features on the library; the command line
# and the benchmarks sit on top.
FLOORS: dict[str, int] = {
    "tools": 0,
    "kernels": 0,
    "llm_tokenizers": 0,
    "torchchat": 1,
    "peers": 2,
    "export": 3,
    "evals": 3,
    "server": 3,
    "runner": 4,
    "cli": 4,
}
TEST_ONLY = ("testing", "tests")


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def violations(root: Path) -> list[str]:
    """`file:line: folder (floor) imports other (floor)` for each wrong import."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            continue
        top = rel.parts[0]
        if top in TEST_ONLY or rel.name.endswith("_test.py") or top not in FLOORS:
            continue
        for line, mod in imports(path):
            if mod in TEST_ONLY:
                out.append(f"{rel}:{line}: {top} imports the test-only {mod}")
                continue
            if mod == top or mod not in FLOORS:
                continue
            if FLOORS[mod] >= FLOORS[top]:
                out.append(
                    f"{rel}:{line}: {top} (floor {FLOORS[top]}) imports {mod} (floor {FLOORS[mod]})"
                )
    return out


def source_root() -> Path:
    """The workspace's files in this test's runfiles."""
    srcdir = os.environ.get("TEST_SRCDIR")
    if srcdir:
        return Path(srcdir) / os.environ.get("TEST_WORKSPACE", "_main")
    return Path(__file__).resolve().parent.parent


class ImportDirectionTest(unittest.TestCase):
    def test_the_house(self) -> None:
        root = source_root()
        for folder in ("cli", "torchchat", "server", "evals", "export", "peers"):
            self.assertTrue(any((root / folder).glob("*.py")), f"{folder} not in the runfiles")
        self.assertEqual(violations(root), [])

    def test_an_upward_import_fails(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            for folder, text in {
                "torchchat": "from server import app\n",  # up
                "server": "from evals import harness\nfrom torchchat import loading\n",  # sideways
                "cli": "import server.main\n",  # down: fine
                "export": "from testing import tiny_model\n",  # test-only
            }.items():
                (root / folder).mkdir()
                (root / folder / "m.py").write_text(text)
                (root / folder / "m_test.py").write_text("import cli\n")  # tests: anything
            found = violations(root)
        self.assertEqual(len(found), 3, found)
        self.assertIn("export/m.py:1: export imports the test-only testing", found)
        self.assertIn("torchchat/m.py:1: torchchat (floor 1) imports server (floor 3)", found)
        self.assertIn("server/m.py:1: server (floor 3) imports evals (floor 3)", found)


if __name__ == "__main__":
    unittest.main()
