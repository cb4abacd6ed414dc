"""Teach: fine-tune the model on everything tagged so far with `catnet finetune`'s code (or, with
no model yet, train a first one with `catnet train`'s), into a new run folder, and measure
validation accuracy before and after on the same pictures."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catnet.config import TrainConfig, from_dict, read_toml
from catnet.curation.corrections import corrected_paths
from catnet.curation.reviewed import reviewed_paths
from catnet.data.folders import Sample, scan_dataset
from catnet.runtime.files import create_new
from catnet.training.results import TrainCallbacks


@dataclass
class TeachResult:
    run_dir: Path
    checkpoint: Path  # the new model (run_dir/best.pt)
    started_from: Path | None  # the checkpoint it continued from, left untouched
    val_pictures: int
    before_acc: float | None  # the old model on this run's validation pictures (None: no model)
    after_acc: float
    seconds: float


def new_teach_dir(out_root: Path) -> Path:
    """out_root/teach-<timestamp>[-n], created here so two Teaches never share a folder."""
    out_root.mkdir(parents=True, exist_ok=True)
    return create_new(out_root / f"teach-{time.strftime('%Y%m%d-%H%M%S')}", os.mkdir)


def teach(
    data_dir: Path,
    checkpoint: Path | None,
    out_root: Path,
    epochs: int,
    first_config: TrainConfig | None = None,
    callbacks: TrainCallbacks | None = None,
) -> TeachResult:
    """One Teach. With a checkpoint: `finetune(checkpoint, data_dir, epochs)` (0: finetune's
    default); without: `train(first_config)` (defaults: TrainConfig with `epochs` epochs, or
    its own default for 0) on data_dir."""
    from catnet.training.loop import finetune, train

    started = time.monotonic()
    run_dir = new_teach_dir(out_root)
    if checkpoint is not None:
        result = finetune(checkpoint, data_dir, epochs, str(run_dir), callbacks)
    else:
        cfg = first_config or (TrainConfig(epochs=epochs) if epochs else TrainConfig())
        cfg = dataclasses.replace(cfg, data=str(data_dir), out=str(run_dir))
        cfg.validate()
        result = train(cfg, callbacks)
    val = validation_pictures(run_dir)
    before = accuracy_on(checkpoint, val) if checkpoint is not None else None
    after = accuracy_on(result.best_checkpoint, val)
    return TeachResult(
        run_dir, result.best_checkpoint, checkpoint, len(val), before, after,
        time.monotonic() - started,
    )  # fmt: skip


def validation_pictures(run_dir: Path) -> list[Sample]:
    """The validation pictures of a finished run, as its training chose them (same split,
    corrected and reviewed pictures moved to training)."""
    cfg = from_dict(TrainConfig, read_toml(run_dir / "config.toml"), source=str(run_dir))
    dataset = scan_dataset(cfg.data, cfg.positive, cfg.val_fraction, cfg.seed)
    lessons = corrected_paths(dataset.root) | reviewed_paths(dataset.root)
    return [s for s in dataset.val if str(s.path.resolve()) not in lessons]


def accuracy_on(checkpoint: Path | Any, samples: list[Sample]) -> float:
    """Share of samples the model (a checkpoint path or a CatnetModel) tags right, by its own
    decision (threshold, open-set check: predict's labels); unreadable pictures count as
    wrong."""
    from catnet.labelling.queue import answers_for, score_and_check
    from catnet.predicting.network_model import CatnetModel
    from catnet.predicting.prediction import load_model

    if not samples:
        return float("nan")
    model = checkpoint if isinstance(checkpoint, CatnetModel) else load_model(checkpoint)
    paths = [s.path for s in samples]
    found = score_and_check(model, paths)
    answers = answers_for(model, paths, found.p_cat, found.open_set)
    said = {p: int(a.label == "cat") for p, a in answers.items()}
    right = sum(1 for s in samples if said.get(s.path) == s.label)
    return right / len(samples)
