"""Runs the torchchat CLI in-process with captured stdin/stdout/stderr, for tests."""

import contextlib
import io
import sys
import warnings
from typing import List, Tuple

from torchchat import cli


def run(argv: List[str], stdin: str = "") -> Tuple[int, str, str]:
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
