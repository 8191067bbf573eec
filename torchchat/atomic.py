"""Atomic artifact writes: a reader sees the old file, the new one, or none.

Exports take minutes; an interrupted one must not leave a truncated .pte or
.pt2 at the target path, where a runner would later choke on it.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator


class OutputPathError(Exception):
    """The output path cannot be written; the message names it and why."""


def check_writable(path: os.PathLike[str] | str) -> None:
    """Fails fast, before minutes of export, if `path` cannot be written."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise OutputPathError(f"{path} is a directory, not a file path")
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write {path}: directory {parent} is not writable")


@contextlib.contextmanager
def atomic_output(path: os.PathLike[str] | str) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it into place on success.

    On any exception (including KeyboardInterrupt) the temporary file is
    removed and `path` is left untouched.
    """
    check_writable(path)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; an artifact should get the usual umask mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
