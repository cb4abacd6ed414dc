"""The end of a training run: reload the best weights, calibrate them, measure them on the
training and validation pictures, diagnose the fit and draw the learning curves."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catnet.config import TrainConfig
from catnet.inference.calibration import fit_temperature
from catnet.inference.metrics import binary_metrics
from catnet.inference.openset import KEY as OPEN_SET_KEY
from catnet.inference.openset import capture_features, fit_open_set, mean_features
from catnet.models.checkpoint import load_checkpoint, save_checkpoint
from catnet.models.networks import build_model, count_parameters
from catnet.runtime.compute import Compute, predict_logits
from catnet.training.diagnosis import diagnose
from catnet.training.results import TrainResult, evaluate_split
from catnet.training.state import PreparedData, TrainState

TRAIN_SAMPLE = 2000  # training pictures measured at the end, and kept for the open-set check


def clean_train_accuracy(
    model: torch.nn.Module, data: PreparedData, compute: Compute, cfg: TrainConfig
) -> float:
    """Accuracy on (up to TRAIN_SAMPLE of) the training pictures without augmentation: the
    honest side of the train/val gap (train_acc in metrics.csv is measured on augmented
    pictures)."""
    pick = np.random.default_rng(0).permutation(len(data.train_slots))[:TRAIN_SAMPLE]
    logits = predict_logits(
        model,
        data.pixels,
        data.train_slots[pick],
        data.eval_size,
        compute,
        cfg.batch_size * 2,
        cfg.tta,
    )
    return float(((logits > 0).long() == torch.from_numpy(data.train_labels[pick])).float().mean())


def finalize_run(
    cfg: TrainConfig,
    run_dir: Path,
    data: PreparedData,
    compute: Compute,
    state: TrainState,
    started: float,
    on_message: Callable[[str], None],
) -> TrainResult:
    best_path = run_dir / "best.pt"
    payload = load_checkpoint(best_path)
    model = build_model(payload["arch"]).to(compute.device, memory_format=torch.channels_last)
    model.load_state_dict(payload["state_dict"])
    # The open-set check is fitted on the features of these two passes: no extra forward pass.
    with capture_features(model) as val_seen:
        val = evaluate_split(model, data, compute, cfg.batch_size * 2, cfg.tta)
    labels = torch.from_numpy(data.val_labels)
    temperature = fit_temperature(val["logits"], labels)
    probs = torch.sigmoid(val["logits"] / temperature)
    metrics = binary_metrics(probs, labels, payload["threshold"])
    with capture_features(model) as train_seen:
        train_accuracy = clean_train_accuracy(model, data, compute, cfg)
    check = fit_open_set(
        mean_features(train_seen, min(len(data.train_slots), TRAIN_SAMPLE)),
        mean_features(val_seen, len(data.val_slots)),
        seed=cfg.seed,
    )
    share = float(data.train_labels.mean())
    metrics.update(
        val_loss=val["val_loss"],
        best_epoch=state.stopper.best_epoch,
        train_accuracy=train_accuracy,
        parameters=count_parameters(model),
        majority_accuracy=max(share, 1 - share),  # what always answering the commoner class scores
    )
    payload.update(temperature=temperature, metrics=_plain(metrics))
    payload[OPEN_SET_KEY] = check.to_payload()
    save_checkpoint(payload, best_path)
    diagnosis = diagnose(
        state.history,
        state.stopper.best_epoch,
        cfg,
        train_accuracy,
        metrics["accuracy"],
        max(share, 1 - share),
    )
    try:
        from catnet.training.plots import plot_curves

        plot_curves(state.history, state.stopper.best_epoch, run_dir / "curves.png")
    except ImportError:  # matplotlib missing: the run is still complete without the picture
        on_message("matplotlib is not installed: no curves.png")
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_path,
        last_checkpoint=run_dir / "last.pt",
        best_epoch=state.stopper.best_epoch,
        epochs_run=state.epoch,
        metrics=metrics,
        history=state.history,
        skipped=len(data.skipped),
        stop_reason="",
        seconds=time.monotonic() - started,
        diagnosis=diagnosis,
    )


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Only primitives go into checkpoints (weights_only loading refuses anything else)."""
    return {k: (_plain(v) if isinstance(v, dict) else v) for k, v in metrics.items()}
