"""File operations that a crash, a Ctrl-C or a second writer cannot half-do.

- `data_lock`: one writer at a time per DATA_DIR (two `catnet label` tabs, or `catnet correct`
  while the page is open), through fcntl.flock on DATA_DIR/.catnet/lock.
- `place`: put a picture under a free name, never overwriting: os.link fails when the name is
  taken, so two writers can never both get the same name.
- `append_row` / `remove_row`: CSV logs written and fsynced before the caller answers.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from catnet.errors import writing
from catnet.runtime.files import append_whole, atomic_write_text, create_new, fsync_folder

try:  # POSIX; elsewhere the lock is a no-op and a single writer is the user's job
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def data_lock(data_dir: Path) -> Iterator[None]:
    """Hold DATA_DIR's writer lock (blocking) for the duration of the block."""
    folder = Path(data_dir) / ".catnet"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def place(source: Path, folder: Path, name: str, move: bool) -> Path:
    """Put source's bytes into folder under `name` or the first free variant of it, never
    replacing a file; with move, source is gone afterwards. Returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    # A copy is a copy (not a second hard link that an edit of the original would change).
    staged = None if move else _staging_copy(source, folder)

    def link(target: Path) -> None:  # os.link claims the name atomically
        nonlocal staged
        try:
            os.link(staged or source, target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK) or staged:
                raise
            # Another file system (or no hard links): copy next to the target first, then
            # link that copy in, so the final name still appears atomically.
            staged = _staging_copy(source, folder)
            os.link(staged, target)

    try:
        target = create_new(folder / name, link)
        if move:
            source.unlink()
            sync_folder(source.parent)
        sync_folder(folder)
        return target
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)


def put_back(current: Path, original: Path) -> None:
    """Move current to exactly `original` (undo); refuses when original was taken since."""
    original.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(current, original)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        staged = _staging_copy(current, original.parent)
        try:
            os.link(staged, original)
        finally:
            staged.unlink(missing_ok=True)
    current.unlink()
    sync_folder(original.parent)
    sync_folder(current.parent)


def _staging_copy(source: Path, folder: Path) -> Path:
    def copy(staged: Path) -> None:
        with source.open("rb") as src, open(staged, "xb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(source, staged)

    return create_new(folder / f".catnet-incoming-{os.getpid()}{source.suffix}", copy)


def sync_folder(folder: Path) -> None:
    """fsync a folder so a rename or link in it survives a power cut; where a file system
    cannot sync a folder, the move itself has still happened."""
    with contextlib.suppress(OSError):
        fsync_folder(folder)


def append_row(log: Path, columns: Sequence[str], row: Sequence[str], what: str = "") -> None:
    """Append one CSV row (header first in a new file), fsynced, in full or not at all: a
    refused write (full disk) is cut back, so the log never holds half a row. `what` names the
    log in an error message."""
    what = what or f"the log {log.name}"
    with writing(what, log.parent):
        log.parent.mkdir(parents=True, exist_ok=True)
    new_file = not log.exists() or log.stat().st_size == 0
    if not new_file:
        _widen(log, columns, what)
    buf = io.StringIO()
    writer = csv.writer(buf)
    if new_file:
        writer.writerow(columns)
    writer.writerow(row)
    append_whole(log, buf.getvalue().encode("utf-8", "surrogateescape"), what)
    if new_file:
        sync_folder(log.parent)


def _widen(log: Path, columns: Sequence[str], what: str) -> None:
    """A log written before `columns` grew at the end (an older catnet) gets the new header,
    its old rows an empty value in each new column (empty = unknown), so a CSV reader sees one
    table. Rewritten atomically; a header that is not a prefix of `columns` is left alone."""
    with log.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    if len(header) >= len(columns) or header != list(columns[: len(header)]):
        return
    extra = [""] * (len(columns) - len(header))
    buf = io.StringIO()
    csv.writer(buf).writerows([list(columns)] + [r + extra for r in rows[1:]])
    atomic_write_text(log, buf.getvalue(), errors="surrogateescape", what=what)


def remove_row(log: Path, row: Sequence[str], what: str = "") -> bool:
    """Rewrite the log without the last row equal to `row` (atomically: a temporary file
    renamed over it). False when no such row is there."""
    if not log.exists():
        return False
    with log.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.reader(fh))
    wanted = [str(v) for v in row]
    hits = [i for i, r in enumerate(rows) if i > 0 and r == wanted]
    if not hits:
        return False
    del rows[hits[-1]]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    text = buf.getvalue()
    atomic_write_text(log, text, errors="surrogateescape", what=what or f"the log {log.name}")
    return True
