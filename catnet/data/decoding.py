"""Decode pictures in parallel worker processes: a stream for the cache, windows for predict.

Workers return a Decoded per picture: its pixels as bytes ((S, S, 3) uint8, RGB), or the
reason it cannot be decoded. Pillow holds the GIL while decoding, so processes, not threads.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from catnet.data.pixels import decode_square, decode_square_bytes
from catnet.errors import DecodeError
from catnet.runtime.workers import cpu_workers, process_pool

Task = tuple[str, int, int]  # (path, decoded size in px, largest picture in pixels)


class Decoded(NamedTuple):
    """One picture's outcome: pixels ((S, S, 3) uint8 RGB as bytes) or the reason there are
    none. A tuple of plain values: pickles small and fast between processes."""

    pixels: bytes | None
    reason: str = ""


def _decode_task(task: Task) -> Decoded:
    """Worker: one picture. Top-level so process pools can pickle it."""
    return decode_one(*task)


def decode_one(path: str, size: int, max_pixels: int, data: bytes | None = None) -> Decoded:
    """One picture's Decoded: from its file, or from its bytes where something else read them
    (catnet.distributed: Ray's readers). The same pixels and the same reasons either way."""
    try:
        if data is None:
            return Decoded(decode_square(path, size, max_pixels).tobytes())
        return Decoded(decode_square_bytes(data, size, max_pixels).tobytes())
    except DecodeError as exc:
        return Decoded(None, exc.reason)


def _decode_chunk(tasks: list[Task]) -> list[Decoded]:
    return [_decode_task(t) for t in tasks]


def decode_stream(
    paths: Iterable[Path], size: int, max_pixels: int, workers: int = 0, ahead: int = 512
) -> Iterator[tuple[Path, Decoded]]:
    """(path, Decoded) in input order, decoded by a pool of processes that
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
    with process_pool(n_workers) as pool:
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
            self.pool = process_pool(self.n_workers)
            self.pool.submit(int).result()  # starts the workers now (all of them, with fork)
            now = multiprocessing.active_children()
            self.pids = [p.pid for p in now if p.pid is not None and p.pid not in before]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, paths: Sequence[Path], lead: int = 0) -> DecodeJob:
        """Start decoding; calling the returned job waits for and returns the Decoded
        results in input order. lead > 0: only the first `lead` files start
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

    def __call__(self) -> list[Decoded]:
        if self.pool is None:  # a handful of files, decoded here
            return [_decode_task(t) for t in self.tasks]
        self.release()
        return [result for f in self.futures for result in f.result()]


def decode_many(
    paths: Sequence[str | Path], size: int, max_pixels: int, workers: int = 0
) -> Iterator[Decoded]:
    """Decode in input order, spread over processes (Pillow holds the GIL while decoding)."""
    for _, result in decode_stream((Path(p) for p in paths), size, max_pixels, workers):
        yield result
