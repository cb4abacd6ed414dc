"""`catnet correct`: tell the network about its mistakes by fixing the tagged folder.

A correction copies the picture into the right class folder, removes copies of the same picture
(same bytes) from the wrong class folders, and appends a row to DATA_DIR/.catnet/corrections.csv.
`catnet finetune` then trains on, with the corrected pictures weighted up.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from catnet.data.folders import POSITIVE_NAMES, is_hidden, list_files
from catnet.errors import CatnetError, WriteFailed, writing
from catnet.runtime.files import append_whole, copy_new, create_new, move_new

LOG_COLUMNS = ("time", "sha256", "old_label", "new_label", "source", "dest")
LABELS = ("cat", "not_cat")


@dataclass
class Correction:
    source: Path
    dest: Path
    old_label: str  # where copies were found before: cat, not_cat, both or new
    new_label: str
    removed: list[Path]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_folders(base: Path) -> tuple[Path, Path]:
    """(cat folder, not-cat folder) inside `base` (DATA_DIR, or one of its split folders).
    A not-cat correction goes into the folder `not_cat` (created if needed)."""
    names = (
        [p.name for p in base.iterdir() if p.is_dir() and not is_hidden(p)] if base.is_dir() else []
    )
    positive = next((n for n in names if n.lower() in POSITIVE_NAMES), "cats")
    return base / positive, base / "not_cat"


def correct(data_dir: str | Path, images: Iterable[str | Path], label: str) -> list[Correction]:
    """Record that each image is `label` (cat or not_cat); returns what was done.

    A picture already in DATA_DIR under the wrong class moves to the right class folder of the
    same split (a test picture stays a test picture); a new picture is copied into train/."""
    if label not in LABELS:
        raise CatnetError(f"--label must be cat or not_cat, not {label!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatnetError(f"data folder not found: {data_dir}")
    by_hash = _hash_index(data_dir)
    done = []
    for image in images:
        source = Path(image)
        if not source.is_file():
            raise CatnetError(f"picture not found: {source}")
        digest = sha256_of(source)
        copies = by_hash.get(digest, [])
        old = {_label_of(p) for p in copies}
        right = [p for p in copies if _label_of(p) == label]
        wrong = [p for p in copies if _label_of(p) != label]
        dest = right[0] if right else None
        moved: tuple[Path, Path] | None = None  # (from, to), to undo if the log cannot be written
        for path in wrong:
            folder = _target_dir(path.parent.parent, label)
            with writing("the corrected picture", folder):
                if dest is None:  # keep one copy, moved to the right class
                    folder.mkdir(parents=True, exist_ok=True)
                    dest = create_new(folder / path.name, partial(move_new, path))
                    moved = (path, dest)
                else:  # the right copy exists, so this never loses the picture
                    path.unlink()
        if dest is None:  # not in the data yet: a new training example
            base = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
            folder = _target_dir(base, label)
            with writing("the corrected picture", folder):  # copy_new leaves no half picture
                folder.mkdir(parents=True, exist_ok=True)
                dest = create_new(folder / source.name, partial(copy_new, source))
            moved = (source, dest)
        old_label = "new" if not old else old.pop() if len(old) == 1 else "both"
        try:
            _log(data_dir, digest, old_label, label, source, dest)
        except WriteFailed:
            _undo(moved)  # a correction is in the log or not made at all
            raise
        done.append(Correction(source, dest, old_label, label, wrong))
    return done


def _undo(moved: tuple[Path, Path] | None) -> None:
    """Put back the move (or remove the copy) of a correction whose log row failed."""
    if moved is None:
        return
    origin, placed = moved
    with contextlib.suppress(OSError):
        if origin.exists():  # a copy from outside DATA_DIR
            placed.unlink()
        else:
            os.rename(placed, origin)


def _target_dir(base: Path, label: str) -> Path:
    cat_dir, not_cat_dir = class_folders(base)
    return cat_dir if label == "cat" else not_cat_dir


def correct_from_file(data_dir: str | Path, rows_file: str | Path) -> list[Correction]:
    """Apply a file whose `label` column the user edited. A row is a correction when its label
    (cat or not_cat) differs from the label it was written with: the folder's tag for
    evaluate's mistakes.csv (it has folder_label), the model's answer for predict's output."""
    rows_file = Path(rows_file)
    if not rows_file.is_file():
        raise CatnetError(f"file not found: {rows_file}")
    done = []
    with rows_file.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        for row in csv.DictReader(fh):
            label = (row.get("label") or "").strip()
            if label not in LABELS or not row.get("path") or not row.get("p_cat"):
                continue
            threshold = float(row.get("threshold") or 0.5)
            predicted = "cat" if float(row["p_cat"]) >= threshold else "not_cat"
            original = row["folder_label"] if row.get("folder_label") else predicted
            if label != original:
                done += correct(data_dir, [row["path"]], label)
    return done


def corrected_paths(data_dir: str | Path) -> set[str]:
    """Resolved paths of pictures that corrections put in place (for weighting them up)."""
    log = Path(data_dir) / ".catnet" / "corrections.csv"
    if not log.exists():
        return set()
    with log.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return {
            str(Path(row["dest"]).resolve())
            for row in csv.DictReader(fh)
            if Path(row["dest"]).exists()
        }


def _hash_index(data_dir: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in list_files(data_dir):
        index.setdefault(sha256_of(path), []).append(path)
    return index


def _label_of(path: Path) -> str:
    """cat if the picture's class folder is named cat or cats, else not_cat."""
    return "cat" if path.parent.name.lower() in POSITIVE_NAMES else "not_cat"


def _log(data_dir: Path, digest: str, old: str, new: str, source: Path, dest: Path) -> None:
    """Append one row to corrections.csv in one write: a refused write is cut back, so the log
    never holds half a row."""
    log = data_dir / ".catnet" / "corrections.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    with writing("the corrections log", log):
        log.parent.mkdir(parents=True, exist_ok=True)
        if not log.exists():
            writer.writerow(LOG_COLUMNS)
    writer.writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), digest, old, new, str(source), str(dest)])
    append_whole(
        log, buf.getvalue().encode("utf-8", errors="surrogateescape"), "the corrections log"
    )
