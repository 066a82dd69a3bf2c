"""Exit codes and the one exception type commands raise to stop with a message."""

from __future__ import annotations

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_NOT_REACHED", "EXIT_OK", "CliError"]

EXIT_OK = 0
"""The command did what was asked."""

EXIT_NOT_REACHED = 1
"""A commit, rollback, run or recovery ran but did not end in its goal state."""

EXIT_ERROR = 2
"""Bad usage or input (unknown id, malformed data, bad handlers, unusable store)."""

EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (128 + SIGINT, as shells report it)."""


class CliError(Exception):
    """A failure the user can fix: printed as one line on stderr, exit code 2.

    Raised before anything is written wherever possible, so a failed command leaves the
    store as it was.
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
