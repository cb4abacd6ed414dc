"""The thread count comes from how busy the CPUs are: our own work must not count as load."""

from __future__ import annotations

import os

import pytest

from catnet.runtime import cpuload


def test_own_cpu_time_is_not_counted_as_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 CPUs over 1 s = 200 ticks: 50 idle, and we ourselves were busy 1 CPU-second (100
    # ticks, e.g. importing torch), so 50 ticks were someone else's: 1.5 CPUs are ours to use.
    samples = iter([(1_000, 10_000, 5.0, 100.0)])
    monkeypatch.setattr(cpuload, "_start", (950, 9_800, 4.0, 99.0))
    monkeypatch.setattr(cpuload, "_last", None)
    monkeypatch.setattr(cpuload, "_read", lambda: next(samples))
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: 100.0)
    monkeypatch.setattr(cpuload.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpuload.os, "sysconf", lambda name: 100)
    assert cpuload.idle_cpus() == pytest.approx(1.5)


def test_a_stale_first_sample_is_taken_again(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = iter([(0, 0, 0.0, 200.0), (200, 200, 0.0, 201.0)])  # all idle since the re-sample
    monkeypatch.setattr(cpuload, "_start", (0, 0, 0.0, 0.0))  # 200 s old: says nothing now
    monkeypatch.setattr(cpuload, "_last", None)
    monkeypatch.setattr(cpuload, "_read", lambda: next(reads))
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: 201.0)
    monkeypatch.setattr(cpuload.os, "cpu_count", lambda: 4)
    assert cpuload.idle_cpus() == pytest.approx(4.0)


def test_a_question_within_the_window_gets_the_last_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training asks every epoch, the engine once per graph: within MIN_WINDOW of the last
    sample there is nothing new to measure, and waiting for a window would cost 0.2 s a time."""
    monkeypatch.setattr(cpuload, "_start", (950, 9_800, 4.0, 99.0))
    monkeypatch.setattr(cpuload, "_last", None)
    monkeypatch.setattr(cpuload, "_read", lambda: (1_000, 10_000, 5.0, 100.0))
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: 100.0)
    monkeypatch.setattr(cpuload.time, "sleep", lambda s: pytest.fail(f"slept {s} s"))
    monkeypatch.setattr(cpuload.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpuload.os, "sysconf", lambda name: 100)
    first = cpuload.idle_cpus()
    monkeypatch.setattr(cpuload, "_read", lambda: pytest.fail("sampled again"))
    assert cpuload.idle_cpus() == first == pytest.approx(1.5)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_real_measurement_is_within_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpuload, "_last", None)
    idle = cpuload.idle_cpus()
    assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1)


def test_noted_workers_time_is_not_counted_as_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 CPUs over 1 s = 200 ticks: 50 idle, 50 ours (0.5 s), 50 by a decoding worker we
    # started (pid 7, noted at 10 ticks, now at 60): 1.5 CPUs are ours to use. Pid 8 exited.
    ticks = {7: 10, 8: 3}
    monkeypatch.setattr(cpuload, "_cpu_ticks", lambda pid: ticks.get(pid))
    monkeypatch.setattr(cpuload, "_helpers", {})
    cpuload.count_as_own([7, 8])
    ticks.update({7: 60, 8: None})  # type: ignore[dict-item]
    monkeypatch.setattr(cpuload, "_start", (950, 9_800, 4.5, 99.0))
    monkeypatch.setattr(cpuload, "_last", None)
    monkeypatch.setattr(cpuload, "_read", lambda: (1_000, 10_000, 5.0, 100.0))
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: 100.0)
    monkeypatch.setattr(cpuload.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpuload.os, "sysconf", lambda name: 100)
    assert cpuload.idle_cpus() == pytest.approx(1.5)
    assert cpuload._helpers == {7: 60}  # counted up to now; the exited one is forgotten


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux only")
def test_cpu_ticks_of_real_processes() -> None:
    assert isinstance(cpuload._cpu_ticks(os.getpid()), int)
    assert cpuload._cpu_ticks(2**22 + 12345) is None  # above Linux's largest pid
