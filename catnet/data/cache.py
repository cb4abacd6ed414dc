"""Decode every picture once (catnet.data.decoding) and keep the pixels on disk, memory-mapped.

Layout of one cache (one per decoded size):
    <cache_root>/v1-s<size>/pixels.u8    fixed-size slots of size*size*3 uint8 (HWC, RGB)
    <cache_root>/v1-s<size>/index.json   {"entries": {key: slot | "!reason"}, "n_slots": int}
(in the index, a string entry is "!" + the reason a file could not be decoded; only this module
reads or writes that encoding).
A key is "abs path | bytes | mtime ns", so a changed file misses and gets a new slot, a removed
file's entry is dropped, and every other entry stays valid. Files that failed to decode are
remembered too, so a corrupt JPEG is not re-read on every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from catnet.data.decoding import decode_many
from catnet.data.folders import missing_reason
from catnet.errors import WriteFailed, write_reason
from catnet.runtime.files import atomic_write, atomic_write_text

CACHE_VERSION = 1
FAILED = "!"  # index entries "!reason": files that could not be decoded
# Pictures are decoded a little larger than the model input so that random crops have margin.
CACHE_MARGIN = 1.15
Progress = Callable[[int, int], None]  # (done, total)


def cache_size_for(image_size: int) -> int:
    return int(round(image_size * CACHE_MARGIN / 4) * 4)


def default_cache_root() -> Path:
    if os.environ.get("CATNET_CACHE"):
        return Path(os.environ["CATNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "catnet"


@dataclass
class PixelTable:
    """Pixels for a list of paths: row i of the input is array[slots[i]], or errors[i]."""

    array: np.ndarray  # (n_slots, S, S, 3) uint8; a read-only memmap when cached
    slots: np.ndarray  # (n_paths,) int64, -1 where the file could not be decoded
    errors: dict[int, str]  # input index -> reason

    @property
    def ok(self) -> np.ndarray:
        return self.slots >= 0


def _key_path(key: str) -> str:
    return key.rsplit("|", 2)[0]  # a path may itself contain "|"


def file_key(path: Path) -> str | None:
    """The key of every cache keyed by file, or None. Hash os.fsencode(key) (non-UTF-8 names)."""
    try:
        stat = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate, in no file system
        return None
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def load_pixels(
    paths: Sequence[Path],
    size: int,
    *,
    cache_root: Path | None = None,
    workers: int = 0,
    max_pixels: int = 120_000_000,
    on_progress: Progress | None = None,
    on_message: Callable[[str], None] | None = None,
) -> PixelTable:
    """Pixels for every path; with cache_root, only new or changed files are decoded. The cache
    is an optimisation, never a requirement: where its folder cannot be written (full disk,
    read-only, no permission), on_message hears it once and the pictures are decoded in
    memory, as with cache_root=None."""
    if cache_root is None:
        return _decode_in_memory(paths, size, max_pixels, workers, on_progress)
    try:
        return DiskCache(cache_root, size).load(paths, workers, max_pixels, on_progress)
    except (OSError, WriteFailed) as exc:
        reason = exc.reason if isinstance(exc, WriteFailed) else write_reason(exc)
        if on_message:
            on_message(
                f"cannot use the picture cache in {cache_root} ({reason}): decoding in memory "
                "this time, as --no-cache does"
            )
        return _decode_in_memory(paths, size, max_pixels, workers, on_progress)


def _decode_in_memory(
    paths: Sequence[Path], size: int, max_pixels: int, workers: int, on_progress: Progress | None
) -> PixelTable:
    array = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    slots = np.full(len(paths), -1, dtype=np.int64)
    errors: dict[int, str] = {}
    for i, result in enumerate(decode_many(paths, size, max_pixels, workers)):
        if result.pixels is None:
            errors[i] = result.reason
        else:
            array[i] = np.frombuffer(result.pixels, dtype=np.uint8).reshape(size, size, 3)
            slots[i] = i
        if on_progress:
            on_progress(i + 1, len(paths))
    return PixelTable(array, slots, errors)


class DiskCache:
    def __init__(self, root: Path, size: int) -> None:
        self.size = size
        self.dir = Path(root) / f"v{CACHE_VERSION}-s{size}"
        self.slot_bytes = size * size * 3

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: two trainings on the same folder must not interleave slots."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, int | str]:
        """The index, or an empty one if it is missing, unreadable or disagrees with the pixels."""
        pixels = self.dir / "pixels.u8"
        try:
            index = json.loads((self.dir / "index.json").read_text())
            entries, n_slots = index["entries"], int(index["n_slots"])
            if index.get("version") != CACHE_VERSION or index.get("size") != self.size:
                raise ValueError("other cache version")
            held = pixels.stat().st_size
            if held > n_slots * self.slot_bytes:
                # Slots appended after the index was written (a kill or a full disk mid-run):
                # nothing points at them, so cut them off rather than discard the whole cache.
                os.truncate(pixels, n_slots * self.slot_bytes)
            elif held < n_slots * self.slot_bytes:
                raise ValueError("pixel file is shorter than the index says")
            if any(isinstance(v, int) and not 0 <= v < n_slots for v in entries.values()):
                raise ValueError("slot out of range")
            return dict(entries)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Corrupt or half-written cache: start over rather than crash or read garbage.
            pixels.unlink(missing_ok=True)
            return {}

    def _write_index(self, entries: dict[str, int | str], n_slots: int) -> None:
        index = {
            "version": CACHE_VERSION,
            "size": self.size,
            "n_slots": n_slots,
            "entries": entries,
        }
        atomic_write_text(self.dir / "index.json", json.dumps(index))

    def load(
        self, paths: Sequence[Path], workers: int, max_pixels: int, on_progress: Progress | None
    ) -> PixelTable:
        keys = [file_key(Path(p)) for p in paths]
        with self._locked():
            stored = self._read_index()
            # Entries of files that changed or vanished are dead: drop them (their slots are
            # reclaimed when the file is compacted).
            entries = {k: v for k, v in stored.items() if file_key(Path(_key_path(k))) == k}
            missing = sorted({k for k in keys if k is not None and k not in entries})
            n_slots = self._append(entries, missing, workers, max_pixels, on_progress, len(paths))
            n_slots, compacted = self._maybe_compact(entries, n_slots)
            # Nothing new: the index on disk is right, and a full disk can still serve it.
            if missing or compacted or len(entries) != len(stored) or not stored:
                self._write_index(entries, n_slots)
        array = self._open(n_slots)
        slots = np.full(len(paths), -1, dtype=np.int64)
        errors: dict[int, str] = {}
        for i, key in enumerate(keys):
            entry = entries.get(key) if key else FAILED + missing_reason(Path(paths[i]))
            if isinstance(entry, int):
                slots[i] = entry
            else:
                errors[i] = str(entry).removeprefix(FAILED)
        return PixelTable(array, slots, errors)

    def _n_slots(self) -> int:
        pixels = self.dir / "pixels.u8"
        return pixels.stat().st_size // self.slot_bytes if pixels.exists() else 0

    def _append(
        self,
        entries: dict[str, int | str],
        keys: list[str],
        workers: int,
        max_pixels: int,
        on_progress: Progress | None,
        total: int,
    ) -> int:
        n_slots = self._n_slots()
        done = total - len(keys)
        if on_progress:
            on_progress(done, total)
        if not keys:
            return n_slots
        paths = [_key_path(k) for k in keys]
        start = n_slots * self.slot_bytes
        try:
            with open(self.dir / "pixels.u8", "ab") as out:
                results = decode_many(paths, self.size, max_pixels, workers)
                for key, result in zip(keys, results, strict=True):
                    if result.pixels is None:
                        entries[key] = FAILED + result.reason
                    else:
                        out.write(result.pixels)
                        entries[key] = n_slots
                        n_slots += 1
                    done += 1
                    if on_progress:
                        on_progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            # A full disk mid-append: cut the partial slots off, so the cache stays as it was
            # (shrinking a file needs no free space).
            with contextlib.suppress(OSError):
                os.truncate(self.dir / "pixels.u8", start)
            raise
        return n_slots

    def _maybe_compact(self, entries: dict[str, int | str], n_slots: int) -> tuple[int, bool]:
        """Rewrite the pixel file when over half of it belongs to files that are gone.
        Returns the number of slots and whether the file was rewritten."""
        live = sorted((v, k) for k, v in entries.items() if isinstance(v, int))
        if n_slots < 256 or len(live) * 2 > n_slots:
            return n_slots, False
        old = self._open(n_slots)

        def copy_live(out: BinaryIO) -> None:
            for old_slot, _ in live:
                out.write(old[old_slot].tobytes())

        atomic_write(self.dir / "pixels.u8", copy_live)
        for new_slot, (_, key) in enumerate(live):  # only once the new file is in place
            entries[key] = new_slot
        return len(live), True

    def _open(self, n_slots: int) -> np.ndarray:
        if n_slots == 0:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        return np.memmap(
            self.dir / "pixels.u8",
            dtype=np.uint8,
            mode="r",
            shape=(n_slots, self.size, self.size, 3),
        )


def clear_cache(root: Path | None = None) -> tuple[Path, int]:
    """Delete the whole cache folder; returns it and the bytes freed."""
    root = root or default_cache_root()
    if not root.exists():
        return root, 0
    freed = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    shutil.rmtree(root)
    return root, freed


def cache_usage(root: Path | None = None) -> tuple[Path, int, int]:
    """(folder, bytes, number of cached pictures) for `catnet cache info`."""
    root = root or default_cache_root()
    total, pictures = 0, 0
    for index in root.glob(f"v{CACHE_VERSION}-s*/index.json"):
        with contextlib.suppress(OSError, ValueError):
            entries = json.loads(index.read_text())["entries"]
            pictures += sum(isinstance(v, int) for v in entries.values())
    if root.exists():
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return root, total, pictures
