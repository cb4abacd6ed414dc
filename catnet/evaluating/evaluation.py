"""`catnet evaluate`: how good is a checkpoint on a folder of tagged pictures?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catnet.config import EvaluateConfig
from catnet.data.cache import default_cache_root, load_pixels
from catnet.data.folders import Dataset, Sample, scan_dataset
from catnet.errors import CatnetError
from catnet.predicting.answering import AnsweringModel
from catnet.predicting.prediction import answering_model
from catnet.runtime.compute import setup_threads
from catnet.scoring.calibration import expected_calibration_error
from catnet.scoring.decision import probabilities
from catnet.scoring.metrics import binary_metrics, pr_curve, unsure_metrics


@dataclass
class EvaluationResult:
    metrics: dict[
        str, Any
    ]  # n, accuracy, precision, recall, f1, roc_auc, threshold, confusion, skipped
    samples: list[Sample] = field(default_factory=list)  # the pictures scored, in order
    probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (n,) calibrated p(cat)
    logits: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (n,) raw logits
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # (n,) open-set scores and flags; None when the check is off or the checkpoint has none.
    scores: torch.Tensor | None = None
    unfamiliar: torch.Tensor | None = None
    # (n,) bool: the decision's answer, True = cat (predict's label, before any unsure band)
    cat: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))


def pick_samples(dataset: Dataset) -> tuple[list[Sample], str]:
    """Split folders: test/ if present, else val/. Class folders: every picture."""
    if dataset.layout == "split":
        return (dataset.test, "test") if dataset.test else (dataset.val, "val")
    return dataset.train + dataset.val, "all"


def _scan(data_dir: str | Path, model: AnsweringModel, positive: str) -> Dataset:
    """Prefer the positive class name the model was trained with, then cat/cats. A folder
    without that class is scored (every picture a not-cat, to count false positives) only when
    --positive names it: otherwise a cat folder under another name (kittens/) would silently
    count as not-cats."""
    trained = model.card.positive
    if positive:
        return scan_dataset(data_dir, positive, 0.0, require_both=False, allow_no_positive=True)
    try:
        return scan_dataset(data_dir, trained, val_fraction=0.0, require_both=False)
    except CatnetError:
        pass
    try:
        return scan_dataset(data_dir, "", val_fraction=0.0, require_both=False)
    except CatnetError as exc:
        exc.hint = (
            f"name the cat folder with --positive NAME (--positive {trained}: none, all not-cats)"
        )
        raise


def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path,
    cfg: EvaluateConfig | None = None,
    on_decode: Callable[[int, int], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> EvaluationResult:
    cfg = cfg or EvaluateConfig(workers=0)
    setup_threads()
    # predict's model: straight from the engine's cache when the checkpoint's graphs are there
    # (no network built, no timm imported: ~2.5 s of a fresh evaluate of the default model)
    model = answering_model(checkpoint, "auto", cfg.engine, cfg.tta, on_message)
    dataset = _scan(data_dir, model, cfg.positive)
    samples, split = pick_samples(dataset)
    if not samples:
        raise CatnetError(f"no pictures to evaluate under {dataset.root}")
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
    table = load_pixels(
        [s.path for s in samples],
        model.decode_size,
        cache_root=cache_root if cfg.cache else None,
        workers=cfg.workers,
        max_pixels=cfg.max_image_pixels,
        on_progress=on_decode,
        on_message=on_message,
    )
    skipped = [(str(samples[i].path), reason) for i, reason in sorted(table.errors.items())]
    keep = np.flatnonzero(table.ok)
    if len(keep) == 0:
        raise CatnetError(f"none of the {len(samples)} pictures under {dataset.root} could be read")
    kept = [samples[i] for i in keep]
    decision = model.decision(cfg.threshold, cfg.unsure, cfg.open_set)
    logits, scores = model.logits_and_scores_of(
        table.array, table.slots[keep], cfg.batch_size, cfg.tta, decision.checks
    )
    decided = decision.decide(logits, scores)
    tensor = torch.from_numpy
    probs, threshold, cat = tensor(decided.p_cat), decision.threshold, tensor(decided.cat)
    unfamiliar = None if decided.unfamiliar is None else tensor(decided.unfamiliar)
    logits = tensor(logits)
    labels = torch.tensor([s.label for s in kept])
    metrics = binary_metrics(probs, labels, threshold, cat)
    has_cats = bool(labels.any())
    metrics["pr_auc"] = pr_curve(probs, labels)["average_precision"] if has_cats else None
    metrics["ece"] = expected_calibration_error(probs, labels)
    metrics["ece_uncalibrated"] = expected_calibration_error(tensor(probabilities(logits)), labels)
    metrics["temperature"] = model.temperature
    if decision.unsure:
        metrics.update(unsure_metrics(cat, tensor(decided.unsure), labels, decision.unsure))
    if unfamiliar is not None:
        # The same decision with the check off: what the check changed.
        unchecked = tensor(decision.with_settings(threshold, open_set=False).decide_p(probs).cat)
        metrics["open_set"] = open_set_metrics(labels, unfamiliar, unchecked)
    metrics.update(skipped=len(skipped), split=split, data=str(dataset.root), model=model.hash)
    return EvaluationResult(
        metrics,
        kept,
        probs,
        logits,
        skipped,
        None if decided.scores is None else tensor(decided.scores),
        unfamiliar,
        cat,
    )


def open_set_metrics(
    labels: torch.Tensor, unfamiliar: torch.Tensor, tagged_cat: torch.Tensor
) -> dict[str, Any]:
    """What the check did here: how many pictures it flagged, how many cats it cost, and the
    accuracy without it (the headline metrics are with it). tagged_cat (n,) bool: the
    decision's answers with the check off."""
    cats = labels.bool()
    return {
        "unfamiliar": int(unfamiliar.sum()),
        "unfamiliar_cats": int((unfamiliar & cats).sum()),
        "cats_turned_away": int((unfamiliar & cats & tagged_cat).sum()),
        "not_cats_turned_away": int((unfamiliar & ~cats & tagged_cat).sum()),
        "accuracy_without_check": float((tagged_cat == cats).float().mean())
        if len(labels)
        else 0.0,
    }


def save_with_threshold(
    checkpoint: str | Path, result: EvaluationResult, rule: str, save_to: str | Path
) -> dict:
    """Pick a threshold on the evaluated pictures by `rule` and write a checkpoint carrying it."""
    from catnet.models.checkpoint import load_checkpoint, save_checkpoint
    from catnet.scoring.metrics import pick_threshold

    labels = torch.tensor([s.label for s in result.samples])
    try:
        picked = pick_threshold(result.probs, labels, rule)
    except ValueError as exc:
        raise CatnetError(str(exc)) from None
    payload = load_checkpoint(checkpoint)
    payload["threshold"] = picked["threshold"]
    payload["threshold_rule"] = {"rule": rule, **picked, "data": str(result.metrics["data"])}
    save_checkpoint(payload, save_to)
    return picked
