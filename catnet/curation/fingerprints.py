"""Fingerprints of picture files for `catnet check`: SHA-256, format, mode, size, and a
perceptual hash, so that pictures that look alike get 64-bit hashes a few bits apart.

Near duplicates (the same photo re-encoded, resized, re-saved) are invisible to SHA-256 and
leak between train and val/test just like exact copies.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from catnet.data.pixels import open_picture, reason_for, to_rgb
from catnet.errors import CatnetError, DecodeError
from catnet.runtime.workers import cpu_workers, process_pool

Progress = Callable[[int, int], None]  # (done, total)
# Rows of the distance matrix computed at once: bounds memory to BLOCK * n * 8 bytes.
BLOCK = 128
CHUNK = 16  # files per task sent to a worker: amortises the pickling round trip
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def dhash(img: Image.Image) -> int:
    """Difference hash: shrink to 9x8 gray, one bit per 'is this pixel brighter than its left
    neighbour'. Gradients survive re-encoding, resizing and small colour changes."""
    # BOX averages every source pixel, so JPEG noise and resampling mostly cancel out.
    gray = img.convert("L").resize((9, 8), Image.Resampling.BOX)
    px = np.asarray(gray, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in; older numpy counts per byte)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    as_bytes = x.view(np.uint8).reshape(*x.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1)


def near_pairs(hashes: Iterable[int], max_distance: int = 4) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most max_distance bits.

    All pairs, O(n^2) popcounts in blocks of BLOCK rows: exact, unlike bucketing, and vectorised
    so that even tens of thousands of pictures take seconds, not minutes.
    """
    h = np.fromiter(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), BLOCK):
        rows = h[start : start + BLOCK]
        dist = popcount(rows[:, None] ^ h[None, start:])
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii  # column 0 is `start`: each pair once, no self pairs
        pairs.extend(zip((ii[keep] + start).tolist(), (jj[keep] + start).tolist(), strict=True))
    return pairs


def groups_from_pairs(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size >= 2 (union-find), each sorted, in order of first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]


def fingerprint_file(path: str, max_pixels: int) -> dict[str, Any]:
    """Everything the doctor needs from one file, from a single read of its bytes:
    sha256, format, mode, size and dHash; or {"reason": ...} when training could not use it."""
    try:
        data = _read_once(Path(path))
        facts = _picture_facts(data, max_pixels)
        facts["sha256"] = hashlib.sha256(data).hexdigest()
        return facts
    except DecodeError as exc:
        return {"reason": exc.reason}


def _read_once(path: Path) -> bytes:
    try:
        info = os.stat(path)  # follows symlinks: a loop fails here (ELOOP) instead of hanging
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError("symbolic link loop") from None
        raise DecodeError(
            "broken symbolic link" if path.is_symlink() else "file not found"
        ) from None
    if not stat.S_ISREG(info.st_mode):  # a folder named x.jpg, a FIFO that would block, ...
        raise DecodeError("not a regular file")
    if info.st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DecodeError(f"unreadable: {exc.strerror or exc}") from None


def _picture_facts(data: bytes, max_pixels: int) -> dict[str, Any]:
    """The checks and reasons of data.decode_square, on bytes already in memory (it only takes
    a path, and reading every file twice would double the doctor's I/O)."""
    try:
        with open_picture(io.BytesIO(data)) as img:  # max_pixels checked below, not Pillow's
            width, height = img.size
            facts = {"format": img.format or "", "mode": img.mode, "size": (width, height)}
            if width * height > max_pixels:
                raise DecodeError(f"too many pixels ({width}x{height}, limit {max_pixels:,})")
            if width < 1 or height < 1:
                raise DecodeError("zero-sized picture")
            img.seek(0)
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))  # the hash needs 9x8 pixels: decode at 1/8 scale
            facts["dhash"] = dhash(to_rgb(ImageOps.exif_transpose(img) or img))
            return facts
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(reason_for(exc, max_pixels)) from None


# ---------------------------------------------------------------------------------------------
# Many files, in worker processes


def _fingerprint_chunk(task: tuple[list[str], int]) -> list[dict[str, Any]]:
    paths, max_pixels = task
    return [fingerprint_file(p, max_pixels) for p in paths]


def fingerprint_files(
    paths: list[str], max_pixels: int, workers: int, on_progress: Progress | None
) -> list[dict[str, Any]]:
    """Fingerprints in input order, from a pool of worker processes (runtime.workers)."""
    n_workers = min(cpu_workers(workers), max(1, len(paths) // CHUNK))
    chunks = [(paths[i : i + CHUNK], max_pixels) for i in range(0, len(paths), CHUNK)]
    results: list[dict[str, Any]] = []
    pool = None
    if n_workers <= 1:  # a pool is not worth it for a handful of files
        mapped: Iterable[list[dict[str, Any]]] = map(_fingerprint_chunk, chunks)
    else:
        pool = process_pool(n_workers)
        mapped = pool.map(_fingerprint_chunk, chunks)
    try:
        for chunk_results in mapped:
            results.extend(chunk_results)
            if on_progress:
                on_progress(len(results), len(paths))
    except BrokenProcessPool:
        raise CatnetError("a worker process died while reading pictures (out of memory?)") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: do not finish the queue
    return results
