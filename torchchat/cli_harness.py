"""Runs the torchchat CLI in-process with captured stdin/stdout/stderr, for tests."""

import contextlib
import io
import sys

from torchchat import cli


def run(argv, stdin=""):
    """Returns (exit code, stdout, stderr) of `torchchat ARGV` fed `stdin`."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()
