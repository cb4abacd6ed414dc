"""What predict hands back and writes: prediction rows, the CSV/JSONL writer that --skip-done
resumes from, --sort-into, and the expansion of the user's inputs into files. No torch here:
the CLI uses these before the network is loaded."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catnet.data.folders import IMAGE_SUFFIXES, iter_files
from catnet.errors import EXIT_USAGE, CatnetError, writing
from catnet.runtime.files import append_to, copy_new, create_new, numbered


@dataclass
class Prediction:
    path: str
    label: str  # cat, not_cat, unsure or error
    p_cat: float | None
    error: str = ""
    # The open-set check: True = unlike every training picture (so never "cat"); None = not
    # checked (--no-open-set, a checkpoint from before the check, or an unreadable file).
    unfamiliar: bool | None = None
    unfamiliar_score: float | None = None  # distance to the k-th nearest training picture

    def as_row(self, model_hash: str, threshold: float | None = None) -> dict[str, Any]:
        p = None if self.p_cat is None else round(self.p_cat, 6)
        score = None if self.unfamiliar_score is None else round(self.unfamiliar_score, 6)
        return {
            "path": self.path,
            "label": self.label,
            "p_cat": p,
            "error": self.error,
            "model": model_hash,
            "threshold": threshold,  # with p_cat, recovers the model's answer after edits
            "unfamiliar": self.unfamiliar,
            "unfamiliar_score": score,
        }


def expand_inputs(inputs: Iterable[str]) -> Iterator[Path]:
    """Files as given, folders searched recursively for pictures, globs expanded."""
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            yield from iter_files(path, IMAGE_SUFFIXES)
        elif path.exists() or path.is_symlink():
            yield path
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            yield from (Path(m) for m in matches if not Path(m).is_dir())
        else:
            yield path  # reported as an error row: the run goes on


def inputs_outside(inputs: Iterable[str], folder: Path) -> Iterator[str]:
    """The expanded inputs not under folder, an output folder that may lie in an input one."""
    root = os.path.join(os.path.abspath(folder), "")
    return (str(p) for p in expand_inputs(inputs) if not os.path.abspath(p).startswith(root))


class RowWriter:
    """Writes prediction rows to .csv or .jsonl as they come, one unbuffered write per row, so a
    killed run leaves a valid file that --skip-done can resume from. A write the disk refuses
    (full, read-only) is cut back to the last complete row and raised as WriteFailed."""

    # New columns go last: an older file resumed with --skip-done keeps its own header (below).
    COLUMNS = (
        "path", "label", "p_cat", "error", "model", "threshold", "unfamiliar", "unfamiliar_score"
    )  # fmt: skip

    def __init__(self, path: Path, append: bool = False) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise CatnetError(f"--output must end in .csv or .jsonl, not {path.name}")
        self.path = path
        self.jsonl = suffix == ".jsonl"
        new = not (append and path.exists() and path.stat().st_size > 0)
        # Before any prediction: an --output that cannot be written is a usage error (exit 2).
        with writing("the predictions", path, EXIT_USAGE):
            if not new:
                _cut_partial_line(path)  # a run killed mid-row left half a line: drop it
            path.parent.mkdir(parents=True, exist_ok=True)
            # An older CSV resumed with --skip-done keeps its own header, so rows line up.
            self.columns = self.COLUMNS if new or self.jsonl else _csv_header(path) or self.COLUMNS
            # Unbuffered: a row is on disk (or refused) when write() returns, and close() has
            # nothing left to flush that could fail.
            self.fh = path.open("wb" if new else "ab", buffering=0)
            if not self.jsonl and new:
                self._put(self._csv_line(dict(zip(self.columns, self.columns, strict=True))))

    def _csv_line(self, row: dict[str, Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow([csv_value(row.get(k)) for k in self.columns])
        return buf.getvalue()

    def _put(self, text: str) -> None:
        data = text.encode("utf-8", errors="surrogateescape")
        append_to(self.fh, data, "the predictions", self.path)  # all of the row, or none

    def write(self, row: dict[str, Any]) -> None:
        self._put(json.dumps(row) + "\n" if self.jsonl else self._csv_line(row))

    def close(self) -> None:
        self.fh.close()


def done_paths(path: Path) -> set[str]:
    """Paths already in an output file (rows cut off mid-line by a kill are ignored)."""
    if not path.exists():
        return set()
    done = set()
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        if path.suffix.lower() == ".jsonl":
            for line in fh:
                try:
                    done.add(json.loads(line)["path"])
                except (ValueError, KeyError, TypeError):
                    continue
        else:
            done.update(row["path"] for row in csv.DictReader(fh) if row.get("label"))
    return done


def sort_into(pred: Prediction, dest: Path, link: bool = False) -> Path | None:
    """Copy (or hard-link) a predicted picture into dest/cat, dest/not_cat or dest/unsure.
    Never overwrites: a different file of the same name gets a numbered name."""
    if pred.label == "error":
        return None
    source = Path(pred.path)
    folder = dest / pred.label
    with writing("the sorted pictures", folder):  # copy_new never leaves half a picture
        folder.mkdir(parents=True, exist_ok=True)
        for existing in numbered(folder / source.name):
            if not os.path.lexists(existing):
                break
            if _same_bytes(existing, source):
                return existing  # already sorted (e.g. a resumed run)
        return create_new(folder / source.name, lambda target: _put(source, target, link))


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _put(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, target)
            return
        except FileExistsError:
            raise
        except OSError:  # another filesystem: fall back to a copy
            pass
    copy_new(source, target)


def csv_value(value: Any) -> Any:
    """Empty for None; true/false for booleans, as in the JSON rows."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _csv_header(path: Path) -> tuple[str, ...]:
    """The columns of an existing CSV file (a file from before a column was added keeps its
    own, so appended rows line up with its header)."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        header = next(csv.reader(fh), [])
    return tuple(header) if "path" in header and "label" in header else ()


def _cut_partial_line(path: Path) -> None:
    """Truncate a file after its last newline (a killed writer may have left half a row)."""
    with path.open("rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fh.truncate(end)
