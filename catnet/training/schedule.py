"""Learning-rate schedules, early stopping, and fitting the epoch count to a time budget."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def lr_factor(schedule: str, progress: float, warmup: float) -> float:
    """Multiplier of the peak LR at `progress` in [0, 1] of the planned training.

    Every schedule but "none" warms up linearly from 0.1 over the first `warmup` share: the
    first steps from random weights are the least reliable, so they are taken small.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "none":
        return 1.0
    if warmup > 0 and progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    rest = (progress - warmup) / (1 - warmup) if warmup < 1 else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    if schedule == "onecycle":  # linear decay to zero: anneals harder at the end than cosine
        return max(1.0 - rest, 0.0)
    if schedule == "step":  # x0.1 at 50% and again at 75% of training
        return 1.0 if rest < 0.5 else 0.1 if rest < 0.75 else 0.01
    raise ValueError(f"unknown schedule {schedule!r}")


@dataclass
class EarlyStopping:
    """Stop when the monitored validation number has not improved for `patience` epochs."""

    patience: int
    min_delta: float = 0.0
    mode: str = "min"  # "min" for a loss, "max" for an accuracy
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.mode == "max" and self.best == math.inf:
            self.best = -math.inf

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True if it is the new best."""
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better or self.best_epoch == 0:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict[str, float | int | str]:
        return asdict(self)


def epochs_that_fit(
    seconds_left: float, seconds_per_epoch: float, epochs_done: int, max_epochs: int
) -> int:
    """Total epochs to plan for when `seconds_left` remain after `epochs_done` epochs."""
    if seconds_per_epoch <= 0:
        return max_epochs
    more = int(seconds_left // seconds_per_epoch)
    return max(epochs_done, min(max_epochs, epochs_done + more))
