"""Find pictures in a folder, label them cat / not cat, split them, and decode them to pixels.

No torch here: decoding runs in worker processes that should start fast.
"""

from __future__ import annotations

import errno
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from catnet.errors import CatnetError

POSITIVE_NAMES = ("cat", "cats")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# Extensions searched when predict walks a folder. Training folders take every file and
# decide by content; this list only keeps `predict DIR` from reporting README.txt as an error.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}
# Folder names that never hold tagged pictures, wherever they are: `catnet label` keeps the
# untagged pictures in DATA_DIR/unlabeled/, which must not count as one more not-cat class.
RESERVED_NAMES = frozenset({"unlabeled"})


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = positive (cat), 0 = not cat
    class_name: str  # the folder it came from (cats, dogs, cars, ...)


@dataclass
class Dataset:
    """Every labelled picture under DATA_DIR, already split."""

    root: Path
    positive: str  # name of the positive class folder
    classes: list[str]  # all class folder names, sorted
    layout: str  # "flat" (class folders) or "split" (train/ val/ [test/])
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def counts(self, samples: list[Sample]) -> dict[str, int]:
        return dict(sorted(Counter(s.class_name for s in samples).items()))


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def is_reserved(path: Path) -> bool:
    """Hidden (.catnet/, .git/) or a reserved name (unlabeled/): never a class folder."""
    return is_hidden(path) or path.name.lower() in RESERVED_NAMES


def list_files(
    folder: Path, suffixes: set[str] | None = None, tagged_only: bool = False
) -> list[Path]:
    """Regular files below folder, recursively, sorted; skips hidden entries and symlink loops,
    and with tagged_only the reserved folders (unlabeled/) too."""
    return list(iter_files(folder, suffixes, tagged_only))


def iter_files(
    folder: Path, suffixes: set[str] | None = None, tagged_only: bool = False
) -> Iterator[Path]:
    """list_files one folder at a time, in the same order: predict starts on the first
    folders of a big tree while the rest is still being listed."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        skip = RESERVED_NAMES if tagged_only else frozenset()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in skip)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if suffixes is None or path.suffix.lower() in suffixes:
                yield path


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_reserved(p))


def _positive_or_absent(classes: list[str], positive: str, required: bool) -> str:
    """The positive folder; where both classes are not required (evaluating a folder of only
    not-cats), a missing one just means every picture is a not-cat."""
    try:
        return find_positive(classes, positive)
    except CatnetError:
        if required:
            raise
        return positive or "cats"


def find_positive(classes: list[str], positive: str = "") -> str:
    """The positive class folder: --positive NAME, else the one named cat or cats (any case)."""
    if positive:
        matches = [c for c in classes if c.lower() == positive.lower()]
        if not matches:
            raise CatnetError(
                f"no class folder named {positive!r}; found: {', '.join(classes) or 'none'}"
            )
        return matches[0]
    matches = [c for c in classes if c.lower() in POSITIVE_NAMES]
    if not matches:
        raise CatnetError(
            f"no 'cat' or 'cats' folder among the class folders ({', '.join(classes) or 'none'})",
            hint="name the positive class with --positive NAME",
        )
    return matches[0]


def _collect(folder: Path, positive: str) -> list[Sample]:
    samples = []
    for class_dir in _class_dirs(folder):
        label = int(class_dir.name.lower() == positive.lower())
        samples.extend(Sample(p, label, class_dir.name) for p in list_files(class_dir))
    return samples


def split_stratified(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split, stratified by class folder so every kind of not-cat is in both."""
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_class.setdefault(s.class_name, []).append(s)
    train, val = [], []
    for name in sorted(by_class):
        items = by_class[name]
        random.Random(f"{seed}:{name}").shuffle(items)
        n_val = round(len(items) * val_fraction)
        if val_fraction > 0 and len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def scan_dataset(
    root: str | Path,
    positive: str = "",
    val_fraction: float = 0.2,
    seed: int = 0,
    require_both: bool = True,
    allow_no_positive: bool = False,
) -> Dataset:
    """Find, label and split every picture under root. Raises CatnetError for unusable folders."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CatnetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise CatnetError(f"not a folder: {root}", hint="DATA_DIR holds one folder per class")
    top = _class_dirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in top if d.name.lower() in SPLIT_NAMES}
    if "train" in split_dirs:
        class_names = sorted({c.name for d in split_dirs.values() for c in _class_dirs(d)})
        pos = _positive_or_absent(class_names, positive, not allow_no_positive)
        parts = {name: _collect(d, pos) for name, d in split_dirs.items()}
        train = parts.get("train", [])
        val, test = parts.get("val", []), parts.get("test", [])
        if not val:  # train/ alone (or train/ + test/): hold out part of train, as in layout (a)
            train, val = split_stratified(train, val_fraction, seed)
        dataset = Dataset(root, pos, class_names, "split", train, val, test)
    else:
        class_names = [d.name for d in top]
        pos = _positive_or_absent(class_names, positive, not allow_no_positive)
        train, val = split_stratified(_collect(root, pos), val_fraction, seed)
        dataset = Dataset(root, pos, class_names, "flat", train, val)
    _check_classes(dataset, require_both)
    return dataset


def _check_classes(dataset: Dataset, require_both: bool) -> None:
    everything = dataset.train + dataset.val + dataset.test
    if not everything:
        raise CatnetError(
            f"no files found under {dataset.root}", hint="expected cats/ and e.g. dogs/"
        )
    labels = {s.label for s in everything}
    if require_both and labels != {0, 1}:
        have = "only cat pictures" if labels == {1} else "no cat pictures"
        raise CatnetError(
            f"{dataset.root} has {have}: a cat detector needs examples of both cat and not-cat",
            hint="add a folder of not-cat pictures (dogs/, cars/, ...) beside cats/",
        )


# ---------------------------------------------------------------------------------------------
# Decoding


def missing_reason(path: Path) -> str:
    """Why a path is not a file to read: a broken link, a link loop, a folder, or nothing."""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as exc:
            return "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
    return "not a regular file" if path.exists() else "file not found"


def printable(text: str) -> str:
    """Non-UTF-8 bytes of a file name as \\xNN, so writing to a UTF-8 terminal cannot fail."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
