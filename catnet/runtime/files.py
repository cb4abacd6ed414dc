"""The one place where catnet replaces or creates files it hands to the user.

`atomic_write` replaces a file so that a crash, a kill or a full disk at any moment leaves
either the old complete file or the new complete one, never half of one. The `*_new` helpers
put a file under a name nobody uses yet (`name.ext`, `name-1.ext`, `name-2.ext`, ...) and never
overwrite: the creation itself fails if another process took the name meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from catnet.errors import WriteFailed, writing

# Signals that stop a command. SIGTERM and SIGHUP are held only where the CLI installed a
# handler for them (catnet.cli.signals); where it did not, their default action (exit at once)
# stays.
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _ctrl_c_after_write() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM/SIGHUP) until the block is done, then deliver it. Writing takes
    milliseconds (under a second): an interrupt mid-write would leave a temp file and, inside
    torch's zip writer, turn into an unrelated RuntimeError. Only the main thread receives
    signals; the previous handlers are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous: dict[int, Any] = {}
    for signum in _HELD_SIGNALS:
        handler = signal.getsignal(signum)
        # Ctrl-C always (unless ignored); SIGTERM/SIGHUP only where a handler was installed.
        if callable(handler) or (signum == signal.SIGINT and handler != signal.SIG_IGN):
            previous[signum] = handler
            signal.signal(signum, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pressed:
        handler = previous[pressed[0]]
        if callable(handler):
            handler(pressed[0], None)  # raises KeyboardInterrupt (or catnet.errors.Stopped)
        raise KeyboardInterrupt  # no handler that raises: stop all the same


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable: it lives in the folder's entry list."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], what: str = "") -> Path:
    """Replace `path` with what `write` puts into the binary file it is given.

    Temp file in the same folder (so the rename cannot cross filesystems), fsync, os.replace,
    fsync the folder. The temp file is removed if `write` fails; Ctrl-C waits for the write.
    A full disk, a read-only folder or a refused permission raises WriteFailed, which names
    `what` ("the checkpoint"; default: just the path), the path and the reason."""
    path = Path(path)
    # pid and thread: two writers of the same file never share a temp file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with _ctrl_c_after_write(), writing(what, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_folder(path.parent)
    return path


def atomic_write_text(
    path: str | Path, text: str, encoding: str = "utf-8", errors: str = "strict", what: str = ""
) -> Path:
    """atomic_write for text. errors: as str.encode ("surrogateescape" keeps non-UTF-8 file
    names lossless, "replace" shows them as "?")."""
    data = text.encode(encoding, errors)
    return atomic_write(path, lambda fh: fh.write(data), what)


def append_whole(path: str | Path, data: bytes, what: str = "") -> None:
    """Append `data` in full or not at all: a refused write (full disk) is cut back to where
    the file ended, so a log or a table never holds half a row. Raises WriteFailed. fsynced
    before it returns: a row that a caller acknowledged (a label on the page) survives a crash."""
    with writing(what, path), open(path, "ab", buffering=0) as fh:
        append_to(fh, data, what, path)
        os.fsync(fh.fileno())


def append_to(fh: BinaryIO, data: bytes, what: str, path: str | Path) -> None:
    """append_whole on an open unbuffered binary file (kept open by writers of many rows)."""
    start = fh.seek(0, os.SEEK_END)
    try:
        with writing(what, path):
            view = memoryview(data)
            while view:
                view = view[fh.write(view) :]
    except WriteFailed:
        with contextlib.suppress(OSError):  # shrinking needs no free space
            os.truncate(fh.fileno(), start)
        raise


def numbered(path: Path) -> Iterator[Path]:
    """path, then name-1.ext, name-2.ext, ... (the suffix kept last, so the type still shows)."""
    yield path
    n = 1
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def create_new(path: str | Path, make: Callable[[Path], None]) -> Path:
    """Try path, name-1.ext, ... (files or folders; existing names and broken symlinks skipped)
    and return the first that `make` created. `make` must raise FileExistsError where the name
    is taken (os.mkdir, os.link, open(..., "xb"), copy_new, move_new do): the creation is the
    check, so a name another process takes meanwhile is skipped, never overwritten."""
    for candidate in numbered(Path(path)):
        if os.path.lexists(candidate):
            continue
        with contextlib.suppress(FileExistsError):
            make(candidate)
            return candidate
    raise AssertionError("unreachable: numbered() never ends")


def copy_new(source: str | Path, target: str | Path) -> None:
    """shutil.copy2 (bytes and timestamps), but fail (FileExistsError) if target exists: the
    name is claimed by creating it exclusively first. A failed copy leaves no partial file."""
    open(target, "xb").close()
    try:
        shutil.copy2(source, target)  # onto the empty file just created: ours to replace
    except BaseException:
        os.unlink(target)
        raise


def move_new(source: str | Path, target: str | Path) -> None:
    """Move like os.rename (a symlink moves itself, not what it points to), but fail
    (FileExistsError) if target exists: a hard link claims the name, then the source goes.
    Where hard links do not work (another filesystem, a folder, FAT), check, then move."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        shutil.move(source, target)
        return
    os.unlink(source)
