"""The error a user's input causes, and the exit codes every command uses.

A `UserError` prints as one line (`torchchat: error: ...`) and exits
EXIT_ERROR; anything else a command raises is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPT = 130


class UserError(Exception):
    """Bad flags or input, named in the message."""
