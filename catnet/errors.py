"""Errors that are the user's to fix: the CLI prints them as one clean message, no traceback."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

# Exit codes: one rule for every command (README, "Exit codes").
EXIT_OK = 0  # done, every input read
# Done, but some inputs could not be read (each reported, then skipped), a check the job makes
# failed (check: leaks; export: differs from PyTorch; training diverged), or a write was refused.
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2  # the user's mistake: a bad flag or value, a missing path, no pictures
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); SIGTERM gives 143 and SIGHUP 129 (128 + signal)

# The machine's failures when catnet writes, in the words the one-line message uses.
WRITE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


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


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal (SIGTERM from a scheduler or `docker stop`, SIGHUP from a
    closed terminal). A KeyboardInterrupt, so every Ctrl-C path (last.pt kept, resume command
    printed, rows flushed) runs for it too; it carries the exit code 128 + signal number."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum


def interrupt_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 128 + signal number for a Stopped."""
    return getattr(exc, "exit_code", EXIT_INTERRUPTED)


class WriteFailed(CatnetError):
    """The machine refused a write (full disk, read-only folder, no permission): one line
    saying what was being written, where, and why. Exit 1: the command had started its work."""

    def __init__(self, what: str, path: str | os.PathLike[str], reason: str, code: int) -> None:
        target = f"{what} to {path}" if what else str(path)
        super().__init__(f"could not write {target}: {reason}", exit_code=code)
        self.what = what
        self.path = str(path)
        self.reason = reason


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError behind exc if the machine refused a write, else None. torch.save on a full
    disk raises RuntimeError("... unexpected pos ...") with the OSError as its context, so the
    __cause__/__context__ chain is searched, not just exc itself."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_REASONS:
            return current
        current = current.__cause__ or current.__context__
    if isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
        # torch's zip writer lost the OSError (it is raised in C++): a short write is a
        # full disk, the only way a local write comes up short.
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def write_reason(exc: OSError) -> str:
    """The words for why the machine refused a file operation."""
    return WRITE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)


def write_failed(
    exc: BaseException, what: str, path: str | os.PathLike[str], code: int = EXIT_SOME_FAILED
) -> WriteFailed | None:
    """A WriteFailed for exc if it is a refused write, else None (re-raise exc as it is)."""
    cause = disk_error(exc)
    if cause is None:
        return None
    return WriteFailed(what, path, WRITE_REASONS[cause.errno], code)


@contextlib.contextmanager
def writing(
    what: str, path: str | os.PathLike[str], code: int = EXIT_SOME_FAILED
) -> Iterator[None]:
    """Turn a refused write inside the block into WriteFailed(what, path); other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        failed = write_failed(exc, what, path, code)
        if failed is None:
            raise
        raise failed from None
