"""Decode every picture once, in parallel, and keep the pixels on disk, memory-mapped.

Layout of one cache (one per decoded size):
    <cache_root>/v1-s<size>/pixels.u8    fixed-size slots of size*size*3 uint8 (HWC, RGB)
    <cache_root>/v1-s<size>/index.json   {"entries": {key: slot | "!reason"}, "n_slots": int}
A key is "abs path | bytes | mtime ns", so a changed file misses and gets a new slot, a removed
file's entry is dropped, and every other entry stays valid. Files that failed to decode are
remembered too, so a corrupt JPEG is not re-read on every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catnet.data import decode_square, missing_reason
from catnet.errors import DecodeError

CACHE_VERSION = 1
# Pictures are decoded a little larger than the model input so that random crops have margin.
CACHE_MARGIN = 1.15
Progress = Callable[[int, int], None]  # (done, total)
Task = tuple[str, int, int]  # (path, decoded size in px, largest picture in pixels)


def cache_size_for(image_size: int) -> int:
    return int(round(image_size * CACHE_MARGIN / 4) * 4)


def default_cache_root() -> Path:
    if os.environ.get("CATNET_CACHE"):
        return Path(os.environ["CATNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "catnet"


def cpu_workers(requested: int = 0) -> int:
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


@dataclass
class PixelTable:
    """Pixels for a list of paths: row i of the input is array[slots[i]], or errors[i]."""

    array: np.ndarray  # (n_slots, S, S, 3) uint8; a read-only memmap when cached
    slots: np.ndarray  # (n_paths,) int64, -1 where the file could not be decoded
    errors: dict[int, str]  # input index -> reason

    @property
    def ok(self) -> np.ndarray:
        return self.slots >= 0


def _decode_task(task: tuple[str, int, int]) -> bytes | str:
    """Worker: pixels as bytes, or '!reason'. Top-level so process pools can pickle it."""
    path, size, max_pixels = task
    try:
        return decode_square(path, size, max_pixels).tobytes()
    except DecodeError as exc:
        return "!" + exc.reason


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops cleanly; otherwise every worker
    would print its own KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(tasks: list[tuple[str, int, int]]) -> list[bytes | str]:
    return [_decode_task(t) for t in tasks]


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork, as torch's DataLoader does: workers start in milliseconds and do not re-import the
    # caller's script (spawn would, breaking scripts without a __main__ guard). The workers
    # only run Pillow and numpy copies, never OpenMP, so torch's threads in the parent are safe.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def decode_stream(
    paths: Iterable[Path], size: int, max_pixels: int, workers: int = 0, ahead: int = 512
) -> Iterator[tuple[Path, bytes | str]]:
    """(path, pixels bytes or '!reason') in input order, decoded by a pool of processes that
    keeps up to `ahead` files in flight: decoding overlaps with whatever the caller does with
    the results, and memory stays bounded however many paths there are."""
    it = iter(paths)
    first = list(itertools.islice(it, 32))
    n_workers = cpu_workers(workers)
    if n_workers <= 1 or len(first) < 32:  # a pool is not worth it for a handful of files
        for path in itertools.chain(first, it):
            yield path, _decode_task((str(path), size, max_pixels))
        return
    it = itertools.chain(first, it)
    chunk_size = 16
    with ProcessPoolExecutor(
        n_workers, mp_context=_pool_context(), initializer=_ignore_sigint
    ) as pool:
        pending: deque[tuple[list[Path], Future]] = deque()

        def submit() -> None:
            chunk = list(itertools.islice(it, chunk_size))
            if chunk:
                tasks = [(str(p), size, max_pixels) for p in chunk]
                pending.append((chunk, pool.submit(_decode_chunk, tasks)))

        for _ in range(max(ahead // chunk_size, 2)):
            submit()
        while pending:
            chunk, future = pending.popleft()
            submit()
            yield from zip(chunk, future.result(), strict=True)


class Decoder:
    """A pool of decoding processes that lives for a whole command, for callers that decode
    window after window (predict): new processes per window would cost a fork and a join each.
    Use as a context manager; `decode` returns results in input order."""

    def __init__(self, size: int, max_pixels: int, workers: int = 0) -> None:
        self.size, self.max_pixels = size, max_pixels
        self.n_workers = cpu_workers(workers)
        self.pool: ProcessPoolExecutor | None = None
        self.pids: list[int] = []  # the worker processes

    def __enter__(self) -> Decoder:
        if self.n_workers > 1:
            before = {p.pid for p in multiprocessing.active_children()}
            self.pool = ProcessPoolExecutor(
                self.n_workers, mp_context=_pool_context(), initializer=_ignore_sigint
            )
            self.pool.submit(int).result()  # starts the workers now (all of them, with fork)
            now = multiprocessing.active_children()
            self.pids = [p.pid for p in now if p.pid is not None and p.pid not in before]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, paths: Sequence[Path], lead: int = 0) -> DecodeJob:
        """Start decoding; calling the returned job waits for and returns the results (pixels
        as bytes, or '!reason') in input order. lead > 0: only the first `lead` files start
        now, on workers that leave one core free, as one chunk per worker (no round trips
        through this process, which may be too busy to answer); the rest waits for
        job.release(). For a caller that needs a core meanwhile: predict imports torch."""
        tasks = [(str(p), self.size, self.max_pixels) for p in paths]
        if self.pool is None or len(tasks) < 32:  # a handful: not worth the round trips
            return DecodeJob(None, [tasks])
        # ~16 chunks per worker: little idle time at the end of a window, few round trips.
        chunk = max(1, min(64, len(tasks) // (16 * self.n_workers)))
        cores = cpu_workers()
        spread = self.n_workers if self.n_workers < cores else cores - 1  # a core stays free
        if not lead or spread < 1:
            return DecodeJob(self.pool, _chunks(tasks, chunk))
        first = _chunks(tasks[:lead], -(-lead // spread))  # ceil: one chunk per worker
        return DecodeJob(self.pool, first, _chunks(tasks[lead:], chunk))

    def decode(self, paths: Sequence[Path]) -> list[bytes | str]:
        return self.submit(paths)()


def _chunks(tasks: list[Task], size: int) -> list[list[Task]]:
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


class DecodeJob:
    """One window's chunks on the pool, in input order. `held` chunks go out only at
    release() (or when the results are asked for): see Decoder.submit's lead."""

    def __init__(
        self,
        pool: ProcessPoolExecutor | None,
        chunks: list[list[Task]],
        held: list[list[Task]] | None = None,
    ) -> None:
        self.pool, self.held = pool, held or []
        if pool is None:
            self.tasks = [t for chunk in chunks + self.held for t in chunk]
            self.futures: list[Future] = []
        else:
            self.futures = [pool.submit(_decode_chunk, chunk) for chunk in chunks]

    def release(self) -> None:
        if self.pool is not None:
            self.futures += [self.pool.submit(_decode_chunk, chunk) for chunk in self.held]
        self.held = []

    def __call__(self) -> list[bytes | str]:
        if self.pool is None:  # a handful of files, decoded here
            return [_decode_task(t) for t in self.tasks]
        self.release()
        return [result for f in self.futures for result in f.result()]


def decode_many(
    paths: Sequence[str | Path], size: int, max_pixels: int, workers: int = 0
) -> Iterator[bytes | str]:
    """Decode in input order, spread over processes (Pillow holds the GIL while decoding)."""
    for _, result in decode_stream((Path(p) for p in paths), size, max_pixels, workers):
        yield result


def _key_path(key: str) -> str:
    return key.rsplit("|", 2)[0]  # a path may itself contain "|"


def file_key(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
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
) -> PixelTable:
    """Pixels for every path; with cache_root, only new or changed files are decoded."""
    if cache_root is None:
        return _decode_in_memory(paths, size, max_pixels, workers, on_progress)
    return DiskCache(cache_root, size).load(paths, workers, max_pixels, on_progress)


def _decode_in_memory(
    paths: Sequence[Path], size: int, max_pixels: int, workers: int, on_progress: Progress | None
) -> PixelTable:
    array = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    slots = np.full(len(paths), -1, dtype=np.int64)
    errors: dict[int, str] = {}
    for i, result in enumerate(decode_many(paths, size, max_pixels, workers)):
        if isinstance(result, str):
            errors[i] = result[1:]
        else:
            array[i] = np.frombuffer(result, dtype=np.uint8).reshape(size, size, 3)
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
            if pixels.stat().st_size != n_slots * self.slot_bytes:
                raise ValueError("pixel file size does not match the index")
            if any(isinstance(v, int) and not 0 <= v < n_slots for v in entries.values()):
                raise ValueError("slot out of range")
            return dict(entries)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Corrupt or half-written cache: start over rather than crash or read garbage.
            pixels.unlink(missing_ok=True)
            return {}

    def _write_index(self, entries: dict[str, int | str], n_slots: int) -> None:
        tmp = self.dir / "index.json.tmp"
        index = {
            "version": CACHE_VERSION,
            "size": self.size,
            "n_slots": n_slots,
            "entries": entries,
        }
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.dir / "index.json")

    def load(
        self, paths: Sequence[Path], workers: int, max_pixels: int, on_progress: Progress | None
    ) -> PixelTable:
        keys = [file_key(Path(p)) for p in paths]
        with self._locked():
            entries = self._read_index()
            # Entries of files that changed or vanished are dead: drop them (their slots are
            # reclaimed when the file is compacted).
            entries = {k: v for k, v in entries.items() if file_key(Path(_key_path(k))) == k}
            missing = sorted({k for k in keys if k is not None and k not in entries})
            n_slots = self._append(entries, missing, workers, max_pixels, on_progress, len(paths))
            n_slots = self._maybe_compact(entries, n_slots)
            self._write_index(entries, n_slots)
        array = self._open(n_slots)
        slots = np.full(len(paths), -1, dtype=np.int64)
        errors: dict[int, str] = {}
        for i, key in enumerate(keys):
            entry = entries.get(key) if key else missing_reason(Path(paths[i]))
            if isinstance(entry, int):
                slots[i] = entry
            else:
                errors[i] = str(entry).lstrip("!")
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
        paths = [_key_path(k) for k in keys]
        with open(self.dir / "pixels.u8", "ab") as out:
            results = decode_many(paths, self.size, max_pixels, workers)
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, str):
                    entries[key] = result
                else:
                    out.write(result)
                    entries[key] = n_slots
                    n_slots += 1
                done += 1
                if on_progress:
                    on_progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        return n_slots

    def _maybe_compact(self, entries: dict[str, int | str], n_slots: int) -> int:
        """Rewrite the pixel file when over half of it belongs to files that are gone."""
        live = sorted((v, k) for k, v in entries.items() if isinstance(v, int))
        if n_slots < 256 or len(live) * 2 > n_slots:
            return n_slots
        old = self._open(n_slots)
        tmp = self.dir / "pixels.u8.tmp"
        with open(tmp, "wb") as out:
            for new_slot, (old_slot, key) in enumerate(live):
                out.write(old[old_slot].tobytes())
                entries[key] = new_slot
        del old
        os.replace(tmp, self.dir / "pixels.u8")
        return len(live)

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
