"""Training re-picks its threads between epochs from the cores other programs leave idle: two
threads on a core someone else is busy on wait for each other at every operation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import catnet.runtime.cpuload
from catnet.training.loop import TrainCallbacks, train


class Threads(TrainCallbacks):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None:
        self.seen.append(torch.get_num_threads())


@pytest.mark.slow  # trains
def test_threads_follow_the_idle_cores_between_epochs(
    tmp_path: Path,
    make_dataset: Callable[..., Path],
    tiny_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=8)
    monkeypatch.delenv("CATNET_THREADS", raising=False)
    monkeypatch.setattr(catnet.runtime.cpuload.os, "sched_getaffinity", lambda pid: {0, 1})
    # Idle cores at the start, then after epochs 1 and 2: someone took a core, then left.
    idle = iter([2.0, 1.0, 2.0])
    monkeypatch.setattr(catnet.runtime.cpuload, "idle_cpus", lambda: next(idle, 2.0))
    threads = Threads()
    before = torch.get_num_threads()
    try:
        train(tiny_config(data, tmp_path / "run", tmp_path / "cache", epochs=3), threads)
    finally:
        torch.set_num_threads(before)
    assert threads.seen == [2, 1, 2]
