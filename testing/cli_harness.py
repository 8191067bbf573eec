"""Runs the torchchat CLI in-process with captured stdin/stdout/stderr, for tests."""

import contextlib
import io
import sys
import tempfile
import unittest
import warnings
from pathlib import Path

from cli import main as cli


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """Returns (exit code, stdout, stderr) of `torchchat ARGV` fed `stdin`."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        # unittest turns DeprecationWarnings on; a user's `torchchat` does not
        # show them (e.g. SWIG's, when sentencepiece is first imported).
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", DeprecationWarning)
            rc = cli.main(argv)
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


class CliTestCase(unittest.TestCase):
    """A temporary directory per test, and the one-line error check every
    CLI error test makes."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def assert_one_line_error(self, argv: list[str], pattern: str) -> None:
        rc, _, err = run(argv)
        self.assertEqual(rc, 1, err)
        # ExecuTorch's runtime logs its CPU probing the first time a program
        # loads in a process (as with generate --pte-path): not an error line.
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[cpuinfo_utils.cpp:")]
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], pattern)
