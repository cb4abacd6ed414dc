"""How many CPUs other programs leave free, measured from /proc/stat without waiting.

catnet/__init__.py takes the first sample when the package is imported, before torch is: the
second sample, when threads are set up, is then ~1 s later (torch's import) and no sleep is
needed. Our own CPU time in between is added back, so our import does not count as load, and
so is that of worker processes we started meanwhile (count_as_own: predict's decoders).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

# A sample older than this says little about the load now (a long-lived Python session).
MAX_AGE = 5.0  # seconds
MIN_WINDOW = 0.2  # seconds; shorter windows are topped up with a sleep


def _read() -> tuple[int, int, float, float] | None:
    """(idle + iowait ticks, all ticks, own CPU seconds, wall seconds), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 5:
        return None
    return values[3] + values[4], sum(values), time.process_time(), time.monotonic()


_start = _read()
_last: float | None = None  # idle_cpus' latest answer


_helpers: dict[int, int] = {}  # pid -> its CPU ticks when noted: our own worker processes


def count_as_own(pids: Iterable[int]) -> None:
    """Worker processes this command just started (predict's decoders, which start before torch
    is imported): their CPU time is ours, not someone else's load. Without this, predict would
    have to measure before starting them, which means waiting for a long enough window."""
    for pid in pids:
        _helpers[pid] = _cpu_ticks(pid) or 0


def forget(pids: Iterable[int]) -> None:
    """Workers that have exited: their pids may come back as someone else's process."""
    for pid in pids:
        _helpers.pop(pid, None)


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None  # gone, or not Linux: its time then looks like load, a safe error


def _helper_ticks() -> int:
    """Ticks our noted workers used since they were noted or last counted; restarts the count."""
    used = 0
    for pid, start in list(_helpers.items()):
        now = _cpu_ticks(pid)
        if now is None:  # exited: nothing more to count
            del _helpers[pid]
            continue
        used += max(0, now - start)
        _helpers[pid] = now
    return used


def idle_cpus() -> float | None:
    """CPUs idle (or used by this process and its noted workers) since the last sample; None
    where unknown."""
    global _start, _last
    first = _start
    if _last is not None and first is not None and time.monotonic() - first[3] < MIN_WINDOW:
        return _last  # asked again at once (torch's threads, then each engine graph): no sleep
    if first is None or time.monotonic() - first[3] > MAX_AGE:
        first = _read()
        _helper_ticks()  # their earlier time is outside the new window
        if first is None:
            return None
    wait = MIN_WINDOW - (time.monotonic() - first[3])
    if wait > 0:
        time.sleep(wait)
    now = _read()
    _start = now
    if now is None:
        return None
    total = max(now[1] - first[1], 1)
    ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # our own busy ticks, and our workers': not someone else's load
    own = (now[2] - first[2]) * ticks_per_second + _helper_ticks()
    free = min(total, (now[0] - first[0]) + own) / total
    _last = free * (os.cpu_count() or 1)
    return _last


def free_threads(reserve: int = 0, share: int = 1) -> int:
    """Threads for a compute library (torch, OpenVINO): the cores we may use that are not busy
    with other work, minus `reserve` (cores our own decode workers will use), divided among the
    `share` processes of this machine (torchrun's ranks). CATNET_THREADS overrides.

    Why not simply every core: OpenMP-style threads wait for each other at every operation, so
    one thread sharing a core with another busy process slows all of them down (ARCHITECTURE.md,
    "Fast: decode once"); fewer threads on free cores beat more threads on busy ones."""
    if os.environ.get("CATNET_THREADS", "").isdigit():
        return max(1, int(os.environ["CATNET_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    idle = idle_cpus()  # since catnet was imported: no extra wait
    free = (cores or 1) if idle is None else min(cores or 1, max(1, round(idle)))
    return max(1, (free - reserve) // max(share, 1))
