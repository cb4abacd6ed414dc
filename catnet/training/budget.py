"""The time budget of the pixel loop: how many epochs fit, re-planned as the speed is measured.

Under torchrun rank 0's clock decides and its plan is broadcast, because the plan sets each
step's learning rate: ranks with different plans would take different steps and their weights
would drift apart (and a different epoch count would hang a collective). So `--time-budget`
holds for the whole job, measured from rank 0's start.
"""

from __future__ import annotations

import time

import numpy as np

from catnet.config import TrainConfig
from catnet.runtime.distributed import SINGLE, Ranks, from_leader
from catnet.training.results import TrainCallbacks
from catnet.training.schedule import epochs_that_fit
from catnet.training.state import TrainState


def plan_epochs(cfg: TrainConfig, state: TrainState, started: float, epoch_seconds: float,
                steps: int, ranks: Ranks = SINGLE) -> None:  # fmt: skip
    """With a time budget, fit the number of epochs (and so the LR schedule) to the time left."""
    planned = cfg.epochs
    if cfg.time_budget > 0 and epoch_seconds > 0:
        reserve = 2.0 + 0.5 * epoch_seconds  # final calibration, checkpoint and plot
        left = cfg.time_budget - (time.monotonic() - started) - reserve
        planned = epochs_that_fit(left, epoch_seconds, state.epoch, cfg.epochs)
    planned = max(planned, state.epoch)
    total = max(planned * steps, state.step)
    state.planned_epochs, state.total_steps = from_leader(ranks, [planned, total])


class BatchClock:
    """Times batches; in the first epoch of a budgeted run it re-plans the epochs from the
    typical (median) batch time at batches 4, 8, 16, ..., so warmup and decay are laid out
    for the time that is really there."""

    def __init__(self, cfg: TrainConfig, state: TrainState, started: float, steps: int,
                 cb: TrainCallbacks, ranks: Ranks = SINGLE) -> None:  # fmt: skip
        self.cfg, self.state, self.started, self.steps, self.cb = cfg, state, started, steps, cb
        self.ranks = ranks
        self.durations: list[float] = []
        self.last = time.monotonic()

    def median(self) -> float:
        return float(np.median(self.durations)) if self.durations else 0.0

    def on_batch(self, step: int, n_steps: int, loss: float) -> None:
        now = time.monotonic()
        self.durations.append(now - self.last)
        self.last = now
        self.cb.on_batch(step, n_steps, loss)
        first_epoch = self.state.epoch == 0 and self.cfg.time_budget > 0
        if first_epoch and step >= 4 and step & (step - 1) == 0:  # the same steps on every rank
            recent = float(np.median(self.durations[step // 2 :]))
            plan_epochs(self.cfg, self.state, self.started, recent * self.steps * 1.2,
                        self.steps, self.ranks)  # fmt: skip
