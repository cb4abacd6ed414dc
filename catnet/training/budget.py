"""The time budget: how many epochs fit, re-planned as the speed is measured.

Under torchrun rank 0's clock decides and its plan is broadcast, because the plan sets each
step's learning rate: ranks with different plans would take different steps and their weights
would drift apart (and a different epoch count would hang a collective). So `--time-budget`
holds for the whole job, measured from rank 0's start.
"""

from __future__ import annotations

import time

import numpy as np

from catnet.runtime.distributed import from_leader
from catnet.training.schedule import epochs_that_fit
from catnet.training.state import Run


def plan_epochs(run: Run, epoch_seconds: float | None = None) -> None:
    """Set the epochs (and so the steps the LR schedule spans): run.max_epochs, or with a time
    budget as many as fit in the time left at `epoch_seconds` (default: the last epoch's) each,
    but never fewer than run.min_epochs or than those already done."""
    cfg, state = run.cfg, run.state
    seconds = state.epoch_seconds if epoch_seconds is None else epoch_seconds
    planned = run.max_epochs
    if cfg.time_budget > 0 and seconds > 0:
        reserve = 2.0 + 0.5 * seconds  # final calibration, checkpoint and plot
        left = cfg.time_budget - (time.monotonic() - run.started) - reserve
        planned = epochs_that_fit(left, seconds, state.epoch, run.max_epochs)
    planned = max(planned, run.min_epochs, state.epoch)
    total = max(planned * run.steps, state.step)
    state.planned_epochs, state.total_steps = from_leader(run.ranks, [planned, total])


class BatchClock:
    """Times batches; in the first epoch of a budgeted run it re-plans the epochs from the
    typical (median) batch time at batches 4, 8, 16, ..., so warmup and decay are laid out
    for the time that is really there."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.durations: list[float] = []  # seconds per batch
        self.last = time.monotonic()

    def median(self) -> float:
        return float(np.median(self.durations)) if self.durations else 0.0

    def on_batch(self, step: int, n_steps: int, loss: float) -> None:
        now = time.monotonic()
        self.durations.append(now - self.last)
        self.last = now
        run = self.run
        run.cb.on_batch(step, n_steps, loss)
        first_epoch = run.state.epoch == 0 and run.cfg.time_budget > 0
        if first_epoch and step >= 4 and step & (step - 1) == 0:  # the same steps on every rank
            recent = float(np.median(self.durations[step // 2 :]))
            plan_epochs(run, recent * run.steps * 1.2)
