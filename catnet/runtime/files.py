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
from typing import BinaryIO


@contextlib.contextmanager
def _ctrl_c_after_write() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise it. Writing takes milliseconds (under
    a second): an interrupt mid-write would leave a temp file and, inside torch's zip writer,
    turn into an unrelated RuntimeError. Only the main thread receives signals; the previous
    handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: pressed.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: it lives in the folder's entry list."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Replace `path` with what `write` puts into the binary file it is given.

    Temp file in the same folder (so the rename cannot cross filesystems), fsync, os.replace,
    fsync the folder. The temp file is removed if `write` fails; Ctrl-C waits for the write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: two writers of the same file never share a temp file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with _ctrl_c_after_write():
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | Path, text: str, encoding: str = "utf-8", errors: str = "strict"
) -> Path:
    """atomic_write for text. errors: as str.encode ("surrogateescape" keeps non-UTF-8 file
    names lossless, "replace" shows them as "?")."""
    data = text.encode(encoding, errors)
    return atomic_write(path, lambda fh: fh.write(data))


def numbered(path: Path) -> Iterator[Path]:
    """path, then name-1.ext, name-2.ext, ... (the suffix kept last, so the type still shows)."""
    yield path
    n = 1
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def create_new(path: str | Path, make: Callable[[Path], None]) -> Path:
    """Try path, name-1.ext, ... in turn (skipping names that exist, broken symlinks too) and
    return the first that `make` created. `make` must raise FileExistsError where the candidate
    exists (os.link, open(..., "xb"), copy_new and move_new do), so that a file another process
    creates meanwhile is never overwritten."""
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
