"""What a training run reports: progress hooks for the caller, the final result, and the
validation pass that both the epoch loop and the end of the run use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from catnet.models.forward import predict_logits
from catnet.runtime.compute import Compute
from catnet.training.prepare import PreparedData


class TrainCallbacks:
    """Hooks for progress display; the CLI subclasses this with Rich, tests use it as is."""

    def on_message(self, text: str) -> None: ...
    def on_decode(self, done: int, total: int) -> None: ...
    def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None: ...
    def on_batch(self, step: int, steps: int, loss: float) -> None: ...
    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """row: metrics.csv's columns plus best (best.pt was written: the epoch improved, or
        best.pt follows the last epoch), improved (`monitor` beat its best so far by more than
        min_delta: what early stopping counts), monitor, planned_epochs (a time budget
        re-plans it as it measures speed) and time_budget (s, 0 = none)."""


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    epochs_run: int
    metrics: dict[str, Any]  # final validation metrics of the best checkpoint
    history: list[dict[str, Any]]
    skipped: int
    stop_reason: str
    seconds: float
    diagnosis: dict[str, str] = field(default_factory=dict)


def evaluate_split(
    model: nn.Module, data: PreparedData, compute: Compute, batch_size: int, tta: bool
) -> dict[str, Any]:
    """Validation loss, accuracy and the raw logits (for calibration) on the held-out pictures."""
    logits = predict_logits(
        model, data.pixels, data.val_slots, data.eval_size, compute, batch_size, tta,
        data.mean, data.std,
    )  # fmt: skip
    labels = torch.from_numpy(data.val_labels)
    loss = F.binary_cross_entropy_with_logits(logits, labels.float()).item()
    acc = float(((logits > 0).long() == labels).float().mean())
    return {"val_loss": loss, "val_acc": acc, "logits": logits}


def epoch_report(
    row: dict[str, Any], cfg: Any, planned_epochs: int, best: bool, improved: bool
) -> dict[str, Any]:
    """What on_epoch_end receives: the metrics row plus `best` (best.pt was written this epoch),
    `improved` (the monitored value beat every earlier epoch), and what the display needs to say
    so (`monitor`, `planned_epochs`, `time_budget` in s). training.loop.run_epochs builds it."""
    return {**row, "best": best, "improved": improved, "monitor": cfg.monitor,
            "planned_epochs": planned_epochs, "time_budget": cfg.time_budget}  # fmt: skip
