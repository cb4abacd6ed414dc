"""The end of a training run: reload the best weights, calibrate them, measure them on the
training and validation pictures, diagnose the fit and draw the learning curves."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from catnet.config import TrainConfig
from catnet.models.checkpoint import load_checkpoint, save_checkpoint
from catnet.models.forward import predict_logits
from catnet.models.networks import count_parameters, network_from
from catnet.models.pretrained import trains_head_only
from catnet.runtime.compute import Compute
from catnet.scoring.calibration import fit_temperature
from catnet.scoring.decision import Decision, probabilities
from catnet.scoring.metrics import binary_metrics
from catnet.scoring.openset import KEY as OPEN_SET_KEY
from catnet.scoring.openset import (
    OpenSetCheck,
    OpenSetFit,
    Verdict,
    capture_features,
    fit_open_set,
    mean_features,
)
from catnet.training.diagnosis import diagnose
from catnet.training.prepare import PreparedData
from catnet.training.results import TrainResult, evaluate_split
from catnet.training.state import Run

# Temperature scaling of a pretrained head, measured on 3 dev splits each (held-out ECE before
# -> after): 320 validation photos 0.0107 -> 0.0089 on average; 40 (100 photos a class at
# 64 px) 0.026 -> 0.036 and 8 (20 a class) 0.026 -> 0.028. A temperature fitted on a few dozen
# photos is noise, so below this many the head's own probabilities are kept (T = 1), unless
# every training photo's out-of-fold logit joins them (a head fitted full batch): at 20 and 50
# photos a class held-out ECE 0.036 -> 0.023 and 0.016 -> 0.011 (Lite2, 3 splits,
# scripts/benchmark_calibration.py).
MIN_CALIBRATION_PICTURES = 100
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
        data.mean,
        data.std,
    )
    return float(((logits > 0).long() == torch.from_numpy(data.train_labels[pick])).float().mean())


def finalize_run(
    run: Run,
    split_logits: Callable[[str], torch.Tensor] | None = None,
    split_net: torch.nn.Module | None = None,
    out_of_fold: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """split_logits("val" | "train"), when given, supplies the best weights' logits (the
    pretrained recipe computes them from its stored features instead of the pixels);
    split_net is the network it runs (the open-set check reads its penultimate features);
    out_of_fold(), when given, the training photos' (n,) logits from heads fitted without
    them (a head fitted full batch: training.head_fit), which calibration then uses too."""
    cfg, run_dir, data, compute, state = run.cfg, run.run_dir, run.data, run.compute, run.state
    best_path = run_dir / "best.pt"
    payload = load_checkpoint(best_path)
    model = network_from(payload).to(compute.device, memory_format=torch.channels_last)
    labels = torch.from_numpy(data.val_labels)
    val, train_accuracy, check = _measure_splits(
        cfg, data, compute, model, split_logits, split_net, trains_head_only(payload)
    )
    check.remember_tagged(_features(model, data, data.tagged_slots, compute, cfg))
    logits, truth = val["logits"], labels
    if out_of_fold is not None:  # every training photo's held-out logit too: 5x the photos
        logits = torch.cat([logits.cpu(), out_of_fold().cpu()])
        truth = torch.cat([labels, torch.from_numpy(data.train_labels)])
    temperature = fit_temperature(logits, truth)
    if (
        payload["arch"]["type"] == "pretrained"
        and out_of_fold is None
        and len(truth) < MIN_CALIBRATION_PICTURES
    ):
        temperature = 1.0
    probs = torch.from_numpy(probabilities(val["logits"], temperature))
    metrics = binary_metrics(probs, labels, payload["threshold"])
    decision = Decision(payload["threshold"], temperature, None, check.threshold)
    decided = decision.decide(val["logits"], check.scores(val["features"]))
    called_cat = decision.with_settings(open_set=False).decide_p(decided.p_cat).cat
    check.verdict = Verdict.of(decided.unfamiliar, called_cat, labels.bool(), check.quantile)
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
        run.cb.on_message("matplotlib is not installed: no curves.png")
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
        seconds=time.monotonic() - run.started,
        diagnosis=diagnosis,
    )


def _measure_splits(
    cfg: TrainConfig,
    data: PreparedData,
    compute: Compute,
    model: torch.nn.Module,
    split_logits: Callable[[str], torch.Tensor] | None,
    split_net: torch.nn.Module | None,
    frozen: bool,
) -> tuple[dict[str, Any], float, OpenSetCheck]:
    """Validation logits, features and loss, clean training accuracy, and the open-set check
    fitted on the penultimate features of those same two passes (no extra forward pass);
    frozen: the features come from a frozen backbone."""
    labels = torch.from_numpy(data.val_labels)
    source = model if split_logits is None or split_net is None else split_net
    with capture_features(source) as val_seen:
        if split_logits is None:
            val = evaluate_split(model, data, compute, cfg.batch_size * 2, cfg.tta)
        else:
            val = {"logits": split_logits("val")}
            val["val_loss"] = F.binary_cross_entropy_with_logits(
                val["logits"], labels.float()
            ).item()
    with capture_features(source) as train_seen:
        if split_logits is None:
            train_accuracy = clean_train_accuracy(model, data, compute, cfg)
            n_train = min(len(data.train_slots), TRAIN_SAMPLE)
        else:
            train_labels = torch.from_numpy(data.train_labels)
            train_logits = split_logits("train")
            train_accuracy = float(((train_logits > 0).long() == train_labels).float().mean())
            n_train = len(data.train_slots)
    val["features"] = mean_features(val_seen, len(data.val_slots))
    # Leave-one-out distances of training pictures stand for new pictures' only where the
    # features did not learn those pictures: a frozen backbone under a head.
    check = fit_open_set(mean_features(train_seen, n_train), val["features"],
                         OpenSetFit(leave_one_out=frozen, seed=cfg.seed))  # fmt: skip
    return val, train_accuracy, check


def _features(
    model: torch.nn.Module, data: PreparedData, slots: np.ndarray, compute: Compute,
    cfg: TrainConfig,
) -> torch.Tensor:  # fmt: skip
    """(n, F) penultimate features of pixels[slots], as predict computes them (flip-averaged
    with TTA): the pictures a person tagged, for the open-set check."""
    with capture_features(model) as seen:
        predict_logits(model, data.pixels, slots, data.eval_size, compute, cfg.batch_size * 2,
                       cfg.tta, data.mean, data.std)  # fmt: skip
    return mean_features(seen, len(slots))


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Only primitives go into checkpoints (weights_only loading refuses anything else)."""
    return {k: (_plain(v) if isinstance(v, dict) else v) for k, v in metrics.items()}
