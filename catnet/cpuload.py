"""How many CPUs other programs leave free, measured from /proc/stat without waiting.

catnet/__init__.py takes the first sample when the package is imported, before torch is: the
second sample, when threads are set up, is then ~1 s later (torch's import) and no sleep is
needed. Our own CPU time in between is added back, so our import does not count as load.
"""

from __future__ import annotations

import os
import time

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


_measured: tuple[float | None, float] | None = None  # (idle CPUs, when), kept for later


def measure_now() -> None:
    """Measure now and keep the answer for the next idle_cpus() call: for a command that is
    about to start worker processes of its own, which would look like someone else's load."""
    global _measured
    _measured = (idle_cpus(), time.monotonic())


def idle_cpus() -> float | None:
    """CPUs idle (or used by this process) since the last sample; None where unknown."""
    global _start, _measured
    if _measured is not None:
        kept, _measured = _measured, None
        if time.monotonic() - kept[1] <= MAX_AGE:
            return kept[0]
    first = _start
    if first is None or time.monotonic() - first[3] > MAX_AGE:
        first = _read()
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
    own = (now[2] - first[2]) * ticks_per_second  # our own busy ticks: not someone else's load
    free = min(total, (now[0] - first[0]) + own) / total
    return free * (os.cpu_count() or 1)
