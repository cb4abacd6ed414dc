"""The run folder: config.toml, metrics.csv, skipped.txt, best.pt, last.pt, curves.png."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

from catnet.errors import EXIT_USAGE, writing
from catnet.runtime.files import atomic_write_text, create_new

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def new_run_dir(out: str) -> Path:
    """`out`, or a new runs/<timestamp>[-n]."""
    if out:
        path = Path(out).expanduser()
        with writing("the run folder", path, EXIT_USAGE):  # before any work: a usage error
            path.mkdir(parents=True, exist_ok=True)
        return path
    runs = Path("runs")
    with writing("the run folder", runs.absolute(), EXIT_USAGE):
        runs.mkdir(exist_ok=True)
        return create_new(runs / time.strftime("%Y%m%d-%H%M%S"), os.mkdir)


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the history: on resume it continues with no duplicated rows."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row[k]) for k in METRIC_COLUMNS})
    atomic_write_text(path, text.getvalue(), what="the training history")


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    """One line per unreadable file: path<TAB>reason."""
    text = "".join(f"{file}\t{reason}\n" for file, reason in skipped)
    atomic_write_text(path, text, errors="surrogateescape", what="the list of skipped files")
