"""`catnet demo`: the whole job, offline, on pictures drawn on the spot.

Draws cats versus cars, birds, houses and noise into train/ val/ test/ folders, trains the CNN
and the textbook MLP on them from scratch and a new head on an ImageNet-pretrained backbone,
evaluates each on the held-out test pictures, and tags a few new, untagged pictures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from catnet.config import TrainConfig
from catnet.demo.synthetic import generate_dataset, generate_unlabeled
from catnet.evaluating.evaluation import evaluate
from catnet.predicting.prediction import load_model
from catnet.training.loop import TrainCallbacks, train

# Pictures per class and split: 5 classes, so 1,000 / 250 / 500 pictures.
SPLITS = {"train": 200, "val": 50, "test": 100}
PICTURE_SIZE = 64  # px, as drawn


def demo_configs(data: Path, runs: Path, time_budget: float) -> dict[str, TrainConfig]:
    """The CNN gets most of the time; the MLP and the pretrained head train for a fraction of it
    (the MLP is small; the pretrained model only trains a head on features computed once)."""
    common = {"data": str(data), "image_size": 32, "cache": False, "patience": 0}
    return {
        "cnn": TrainConfig(
            **common, out=str(runs / "cnn"), model="cnn", width=24, depth=3, epochs=40,
            time_budget=time_budget, batch_size=64, lr=4e-3, dropout=0.1,
        ),
        "mlp": TrainConfig(
            **common, out=str(runs / "mlp"), model="mlp", hidden=[512, 128], epochs=40,
            time_budget=max(time_budget / 4, 10.0), batch_size=64, lr=1e-3, dropout=0.2,
            augment=False, weight_decay=0.01,
        ),
        # ImageNet features of 64 px drawings: cheap to compute (~12x fewer pixels than 224 px)
        # and a head on them trains in seconds, offline (the weights ship as a package).
        "pretrained": TrainConfig(
            **common | {"image_size": 64}, out=str(runs / "pretrained"), model="pretrained",
            epochs=60, time_budget=max(time_budget / 6, 8.0), batch_size=64,
        ),
    }  # fmt: skip


def make_data(out: Path, seed: int = 0) -> Path:
    data = out / "data"
    for i, (split, n) in enumerate(SPLITS.items()):
        if not (data / split).exists():
            generate_dataset(data / split, n_per_class=n, size=PICTURE_SIZE, seed=seed + 1000 * i)
    return data


def run_demo(
    out: Path, time_budget: float = 60.0, callbacks: TrainCallbacks | None = None
) -> dict[str, Any]:
    """Returns {"models": {name: metrics}, "predictions": [...], "paths": {...}}."""
    cb = callbacks or TrainCallbacks()
    out = Path(out)
    cb.on_message(
        f"drawing synthetic pictures into {out / 'data'} (cats, cars, birds, houses, noise)"
    )
    data = make_data(out)
    models: dict[str, Any] = {}
    for name, cfg in demo_configs(data, out / "runs", time_budget).items():
        cb.on_message(f"training the {name.upper()} ...")
        started = time.monotonic()
        result = train(cfg, cb)
        seconds = time.monotonic() - started
        test = evaluate(result.best_checkpoint, data).metrics
        models[name] = {
            "accuracy": test["accuracy"],
            "roc_auc": test["roc_auc"],
            "seconds": seconds,
            "parameters": _parameters(result.best_checkpoint),
            "checkpoint": str(result.best_checkpoint),
        }
    new = generate_unlabeled(out / "new", 8, size=PICTURE_SIZE, seed=99)
    model = load_model(models["cnn"]["checkpoint"])
    predictions = []
    for (path, kind), pred in zip(new, model.predict([p for p, _ in new]), strict=True):
        truth = "cat" if kind == "cats" else f"not_cat ({kind})"
        predictions.append(
            {"path": str(path), "label": pred.label, "p_cat": pred.p_cat, "truth": truth}
        )
    paths = {
        "tagged pictures": str(data),
        "CNN run": str(out / "runs" / "cnn"),
        "MLP run": str(out / "runs" / "mlp"),
        "learning curves": str(out / "runs" / "cnn" / "curves.png"),
        "untagged pictures": str(out / "new"),
    }
    return {"models": models, "predictions": predictions, "paths": paths}


def _parameters(checkpoint: Path) -> int:
    from catnet.models.networks import count_parameters

    return count_parameters(load_model(checkpoint).module)
