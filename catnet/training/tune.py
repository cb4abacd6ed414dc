"""`catnet tune`: find the right network size by trial, with successive halving. For a pretrained
model the candidates are how many backbone stages to train and how strongly to regularise.

Round 1 trains every candidate size briefly; each later round keeps the better half (by
validation accuracy) and gives each survivor twice the time. Too small a network underfits (low
train accuracy), too big a one overfits (train far above validation): the table shows both.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catnet.config import TrainConfig, save_config
from catnet.errors import EXIT_USAGE, writing
from catnet.runtime.files import atomic_write, atomic_write_text
from catnet.training.diagnosis import OVERFIT_GAP, underfit_floor
from catnet.training.loop import TrainCallbacks, train

CNN_SIZES = [(8, 2), (16, 2), (16, 3), (32, 3), (64, 3), (64, 4)]  # (width, depth)
MLP_SIZES = [[16], [64], [256], [512, 128], [2048, 512], [4096, 1024, 256]]
COLUMNS = (
    "trial",
    "round",
    "size",
    "parameters",
    "train_acc",
    "val_acc",
    "gap",
    "verdict",
    "seconds",
)


@dataclass
class Trial:
    name: str
    overrides: dict[str, Any]
    size: str
    result: dict[str, Any] | None = None


# For a pretrained backbone the size is fixed; what matters is how much of it is trained on the
# new pictures and how strongly: (backbone stages trained, dropout, weight decay).
PRETRAINED_TRIALS = [(0, 0.2, 0.05), (0, 0.4, 0.2), (0, 0.6, 0.5), (1, 0.2, 0.05), (1, 0.4, 0.2),
                     (2, 0.4, 0.2)]  # fmt: skip


def candidates(model: str) -> list[Trial]:
    if model == "pretrained":
        return [
            Trial(
                f"pretrained-s{k}-d{d}-wd{wd}",
                {"train_stages": k, "dropout": d, "weight_decay": wd},
                f"{k} stages trained, dropout {d}, decay {wd}",
            )
            for k, d, wd in PRETRAINED_TRIALS
        ]
    if model == "mlp":
        return [
            Trial(f"mlp-{'-'.join(map(str, h))}", {"hidden": h}, "x".join(map(str, h)))
            for h in MLP_SIZES
        ]
    return [
        Trial(f"cnn-w{w}-d{d}", {"width": w, "depth": d}, f"width {w}, depth {d}")
        for w, d in CNN_SIZES
    ]


def verdict(train_acc: float, val_acc: float, best_val: float, majority: float = 0.5) -> str:
    """underfit: cannot even fit its training pictures (or barely beats always answering the
    commoner class); overfit: fits them far better than new ones; good otherwise."""
    gap = train_acc - val_acc
    if gap > OVERFIT_GAP:
        return "overfit"
    # Well behind the best size without overfitting: too small to learn what the others did.
    behind = val_acc < best_val - 0.05 and gap < 0.03
    if train_acc < underfit_floor(majority) or behind:
        return "underfit"
    return "good"


def tune(
    base: TrainConfig,
    time_budget: float,
    out: Path,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    callbacks: TrainCallbacks | None = None,
) -> dict[str, Any]:
    """Run the search; writes tune.csv, tune.png and best.toml into out. Returns the rows and
    the best trial."""
    with writing("the tune folder", out, EXIT_USAGE):  # before any trial: a usage error
        out.mkdir(parents=True, exist_ok=True)
    trials = candidates(base.model)
    rounds = max(1, math.ceil(math.log2(len(trials))))
    per_round = time_budget / rounds  # each round gets the same total time, split among survivors
    rows: list[dict[str, Any]] = []
    alive = trials
    for round_no in range(1, rounds + 1):
        seconds = per_round / len(alive)  # trials always finish one epoch, however short this is
        for trial in alive:
            cfg = dataclasses.replace(base, **trial.overrides, time_budget=seconds, patience=0)
            cfg.out = str(out / f"round{round_no}-{trial.name}")
            result = train(cfg, callbacks)
            trial.result = {"cfg": cfg, "metrics": result.metrics, "seconds": result.seconds}
            rows.append(_row(trial, round_no, result))
            if on_trial:
                on_trial(rows[-1])
        alive = sorted(alive, key=lambda t: -t.result["metrics"]["accuracy"])[
            : max(1, len(alive) // 2)
        ]
    best_val = max(r["val_acc"] for r in rows)
    for row in rows:
        row["verdict"] = verdict(row["train_acc"], row["val_acc"], best_val, row.pop("majority"))
    best = alive[0]
    _write(out, rows, best)
    # skipped: every trial reads the same data
    return {"rows": rows, "best": best.name, "best_config": str(out / "best.toml"),
            "skipped": result.skipped}  # fmt: skip


def _row(trial: Trial, round_no: int, result: Any) -> dict[str, Any]:
    m = result.metrics
    return {
        "trial": trial.name,
        "round": round_no,
        "size": trial.size,
        "parameters": m["parameters"],
        "train_acc": m["train_accuracy"],
        "val_acc": m["accuracy"],
        "gap": m["train_accuracy"] - m["accuracy"],
        "verdict": "",
        "seconds": result.seconds,
        "majority": m["majority_accuracy"],
    }


def _write(out: Path, rows: list[dict[str, Any]], best: Trial) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(
        {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows
    )
    atomic_write_text(out / "tune.csv", table.getvalue(), what="the tune table")
    cfg = dataclasses.replace(best.result["cfg"], out="", data="", resume="", init_from="")
    save_config(cfg, out / "best.toml")
    with contextlib.suppress(ImportError):  # no matplotlib: the table and best.toml remain
        plot_tune(rows, out / "tune.png")


def plot_tune(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    last = {}
    for row in rows:  # each size's longest (latest-round) trial
        last[row["trial"]] = row
    pts = sorted(last.values(), key=lambda r: r["parameters"])
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(
        [r["parameters"] for r in pts], [r["train_acc"] for r in pts], "o-", label="train accuracy"
    )
    ax.plot([r["parameters"] for r in pts], [r["val_acc"] for r in pts], "s-", label="val accuracy")
    for r in pts:
        where = (r["parameters"], r["val_acc"])
        ax.annotate(
            r["verdict"],
            where,
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("Network size: too small underfits, too big overfits")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), what="the tune plot")
