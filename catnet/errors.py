"""Errors that are the user's to fix: the CLI prints them as one clean message, no traceback."""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the command ran, but some inputs could not be read
EXIT_USAGE = 2  # bad arguments, bad paths, unusable data or model files
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CatnetError(Exception):
    """A problem with the user's input (paths, data, options, model files)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


class DecodeError(Exception):
    """One file could not be turned into pixels; carries a short, human reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
