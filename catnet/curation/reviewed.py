"""DATA_DIR/.catnet/reviewed.csv: tagged pictures a person looked at and confirmed although the
model disagreed (`catnet label`'s Review page). They leave the review queue for good and, like
corrected pictures, are weighted up at the next fine-tune: the model got them wrong."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from catnet.curation.safe_files import append_row, data_lock, remove_row

REVIEWED_COLUMNS = ("time", "sha256", "label", "path")


def reviewed_log(data_dir: str | Path) -> Path:
    return Path(data_dir) / ".catnet" / "reviewed.csv"


def mark_reviewed(data_dir: str | Path, path: Path, digest: str, label: str) -> tuple[str, ...]:
    """Record that `path`'s tag (label: cat or not_cat) is right; returns the row written."""
    row = (time.strftime("%Y-%m-%dT%H:%M:%S"), digest, label, str(path))
    with data_lock(Path(data_dir)):
        append_row(reviewed_log(data_dir), REVIEWED_COLUMNS, row)
    return row


def unmark_reviewed(data_dir: str | Path, row: tuple[str, ...]) -> bool:
    """Undo mark_reviewed: drop exactly that row."""
    with data_lock(Path(data_dir)):
        return remove_row(reviewed_log(data_dir), row)


def reviewed_rows(data_dir: str | Path) -> list[dict[str, str]]:
    log = reviewed_log(data_dir)
    if not log.exists():
        return []
    with log.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


def reviewed_paths(data_dir: str | Path) -> set[str]:
    """Resolved paths of confirmed pictures that are still there (for weighting them up)."""
    return {
        str(Path(row["path"]).resolve())
        for row in reviewed_rows(data_dir)
        if Path(row["path"]).exists()
    }
