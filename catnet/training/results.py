"""What a training run reports: progress hooks for the caller, the final result, and the
validation pass that both the epoch loop and the end of the run use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from catnet.runtime.compute import Compute, predict_logits
from catnet.training.state import PreparedData


class TrainCallbacks:
    """Hooks for progress display; the CLI subclasses this with Rich, tests use it as is."""

    def on_message(self, text: str) -> None: ...
    def on_decode(self, done: int, total: int) -> None: ...
    def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None: ...
    def on_batch(self, step: int, steps: int, loss: float) -> None: ...
    def on_epoch_end(self, row: dict[str, Any]) -> None: ...


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
