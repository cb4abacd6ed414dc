"""`catnet correct`: tell the network about its mistakes by fixing the tagged folder.

A correction copies the picture into the right class folder, removes copies of the same picture
(same bytes) from the wrong class folders, and appends a row to DATA_DIR/.catnet/corrections.csv.
`catnet finetune` then trains on, with the pictures the model got wrong weighted up: the log's
last column, model_label, keeps what the model said when the answer was given (cat, not_cat,
none: no model yet; empty: unknown, as in logs from before that column and `catnet correct` by
hand, which are weighted up as before). `catnet label` uses the
same code with move=True (an untagged picture leaves unlabeled/) and `undo` to take one back.
Every change happens under DATA_DIR's writer lock, never overwrites a file, and is fsynced.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from catnet.curation.safe_files import append_row, data_lock, place, put_back, remove_row
from catnet.data.cache import file_key
from catnet.data.folders import POSITIVE_NAMES, is_reserved, list_files
from catnet.errors import CatnetError, WriteFailed, writing

LOG_COLUMNS = ("time", "sha256", "old_label", "new_label", "source", "dest", "model_label")
LABELS = ("cat", "not_cat")


@dataclass
class Correction:
    source: Path
    dest: Path
    old_label: str  # where copies were found before: cat, not_cat, both or new
    new_label: str
    removed: list[Path]
    moved_from: Path | None = None  # where dest was before, when the picture was moved
    logged: tuple[str, ...] = field(default=())  # its row in corrections.csv


# sha256 by file_key: a long-lived caller (catnet label) hashes each file once.
HashCache = dict[str, str]


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
        [p.name for p in base.iterdir() if p.is_dir() and not is_reserved(p)]
        if base.is_dir()
        else []
    )
    positive = next((n for n in names if n.lower() in POSITIVE_NAMES), "cats")
    return base / positive, base / "not_cat"


def correct(
    data_dir: str | Path,
    images: Iterable[str | Path],
    label: str,
    move: bool = False,
    hashes: HashCache | None = None,
    model_label: str = "",
) -> list[Correction]:
    """Record that each image is `label` (cat or not_cat); returns what was done. model_label:
    what the model said about the images (cat, not_cat, none, or "" when unknown); logged, it
    decides whether fine-tuning weights them up (see lesson).

    A picture already in DATA_DIR under the wrong class moves to the right class folder of the
    same split (a test picture stays a test picture); a new picture is copied into train/ (moved
    with move=True). Raises CatnetError when a picture is gone (another tab took it first)."""
    if label not in LABELS:
        raise CatnetError(f"--truth must be cat or not_cat, not {label!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatnetError(f"data folder not found: {data_dir}")
    done = []
    with data_lock(data_dir):
        by_hash = _hash_index(data_dir, hashes)
        for image in images:
            source = Path(image)
            if not source.is_file():
                raise CatnetError(f"picture not found: {source}")
            digest = _sha256_cached(source, hashes)
            copies = by_hash.get(digest, [])
            done.append(_correct_one(data_dir, source, digest, copies, (label, model_label), move))
    return done


def _correct_one(
    data_dir: Path,
    source: Path,
    digest: str,
    copies: list[Path],
    labels: tuple[str, str],
    move: bool,
) -> Correction:
    label, model_label = labels  # the answer, and what the model had said
    old = {_label_of(p) for p in copies}
    right = [p for p in copies if _label_of(p) == label]
    wrong = [p for p in copies if _label_of(p) != label]
    dest, moved_from, removed = (right[0] if right else None), None, []
    for path in wrong:
        if dest is None:  # keep one copy, moved to the right class
            folder = _target_dir(path.parent.parent, label)
            with writing("the corrected picture", folder):
                dest = place(path, folder, path.name, move=True)
            moved_from = path
        else:  # the right copy exists, so this never loses the picture
            path.unlink()
            removed.append(path)
    if dest is None:  # not in the data yet: a new training example
        base = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
        folder = _target_dir(base, label)
        with writing("the corrected picture", folder):
            dest = place(source, folder, source.name, move=move)
        moved_from = source if move else None
    elif move and source.exists() and source not in copies:  # an untagged duplicate: taken
        source.unlink()  # too, so it leaves the queue; undo rebuilds it from dest's bytes
        removed.append(source)
    old_label = "new" if not old else old.pop() if len(old) == 1 else "both"
    done = Correction(source, dest, old_label, label, removed, moved_from)
    try:
        row = (old_label, label, str(source), str(dest), model_label)
        done.logged = _log(data_dir, digest, row)
    except WriteFailed:  # a correction is in the log or not made at all
        with contextlib.suppress(OSError, CatnetError):
            undo(data_dir, done, locked=True)
        raise
    return done


def undo(data_dir: str | Path, done: Correction, locked: bool = False) -> None:
    """Take back one correction exactly: the picture returns to where it was (removed copies of
    it too) and its row leaves corrections.csv. Refuses when the files changed since. locked:
    the caller already holds DATA_DIR's lock (flock is per open file, so taking it twice would
    wait for ever)."""
    data_dir = Path(data_dir)
    with contextlib.nullcontext() if locked else data_lock(data_dir):
        if not done.dest.is_file() or (done.logged and sha256_of(done.dest) != done.logged[1]):
            raise CatnetError(f"cannot undo: {done.dest} changed or is gone")
        if done.moved_from is not None and os.path.lexists(done.moved_from):
            raise CatnetError(f"cannot undo: {done.moved_from} exists again")
        for path in done.removed:  # same bytes as dest, by construction
            place(done.dest, path.parent, path.name, move=False)
        if done.moved_from is not None:
            put_back(done.dest, done.moved_from)
        elif done.old_label == "new":
            done.dest.unlink()
        if done.logged:
            remove_row(data_dir / ".catnet" / "corrections.csv", done.logged, "the corrections log")


def _target_dir(base: Path, label: str) -> Path:
    cat_dir, not_cat_dir = class_folders(base)
    return cat_dir if label == "cat" else not_cat_dir


def correct_from_file(data_dir: str | Path, rows_file: str | Path) -> list[Correction]:
    """Apply rows where the user wrote the right answer: in `truth` (mistakes.csv: written as the
    folder's tag), else in `label` (written as the model's answer). A row whose answer changed is
    a correction; an unedited file changes nothing. Older files read too: mistakes.csv with
    `folder_label` (label was the tag), explain's rows with `input`."""
    rows_file = Path(rows_file)
    if not rows_file.is_file():
        raise CatnetError(f"file not found: {rows_file}")
    done = []
    with rows_file.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        for row in csv.DictReader(fh):
            path = row.get("path") or row.get("input")
            if not path or not row.get("p_cat"):
                continue  # an error row: the model gave no answer
            # The model's answer (label may be edited); an unfamiliar picture is never cat.
            cat = float(row["p_cat"]) >= float(row.get("threshold") or 0.5)
            said = "cat" if cat and row.get("unfamiliar") != "true" else "not_cat"
            if (row.get("truth") or "").strip():  # mistakes.csv: the tag was the other answer
                right, written = row["truth"].strip(), "not_cat" if said == "cat" else "cat"
            else:
                right, written = (row.get("label") or "").strip(), row.get("folder_label") or said
            if right in LABELS and right != written:
                done += correct(data_dir, [path], right, model_label=said)
    return done


def corrected_paths(data_dir: str | Path, lessons_only: bool = True) -> set[str]:
    """Resolved paths of the logged pictures that are lessons (see lesson) and still there: they
    are weighted up and kept out of validation. Other logged pictures are ordinary data.
    lessons_only False: every logged picture still there (all were tagged by a person)."""
    log = Path(data_dir) / ".catnet" / "corrections.csv"
    if not log.exists():
        return set()
    with log.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return {
            str(Path(row["dest"]).resolve())
            for row in csv.DictReader(fh)
            if (lesson(row) or not lessons_only) and Path(row["dest"]).exists()
        }


def lesson(row: dict[str, str]) -> bool:
    """Whether a log row is a picture the model got wrong: its model_label differs from the new
    label, or is unknown (empty or missing: an older log, a correction by hand). A picture
    tagged with no model yet (none), or the way the model already said, teaches nothing new."""
    said = (row.get("model_label") or "").strip()
    if said == "none":
        return False
    return said not in LABELS or said != row.get("new_label")


def _hash_index(data_dir: Path, hashes: HashCache | None = None) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in list_files(data_dir, tagged_only=True):  # unlabeled/ holds no tagged copies
        with contextlib.suppress(OSError):  # a broken link is no copy of anything
            index.setdefault(_sha256_cached(path, hashes), []).append(path)
    return index


def _sha256_cached(path: Path, hashes: HashCache | None) -> str:
    key = file_key(path)
    if hashes is None or key is None:
        return sha256_of(path)  # raises OSError where the file cannot be read
    if key not in hashes:
        hashes[key] = sha256_of(path)
    return hashes[key]


def _label_of(path: Path) -> str:
    """cat if the picture's class folder is named cat or cats, else not_cat."""
    return "cat" if path.parent.name.lower() in POSITIVE_NAMES else "not_cat"


def _log(data_dir: Path, digest: str, rest: tuple[str, ...]) -> tuple[str, ...]:
    """Append (time, digest, *rest) in LOG_COLUMNS' order; returns the row, for undo."""
    row = (time.strftime("%Y-%m-%dT%H:%M:%S"), digest, *rest)
    append_row(data_dir / ".catnet" / "corrections.csv", LOG_COLUMNS, row, "the corrections log")
    return row
