"""Turn the Oxford-IIIT Pet dataset into a catnet data folder: OUT/cats/ and OUT/dogs/.

Usage:  python scripts/download_pets.py --out data/pets [--link] [--max-per-class 200]

Nothing is downloaded unless this script is run; `convert` only reads an existing copy,
so it can be imported and tested offline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

PET_DIR = "oxford-iiit-pet"
# SPECIES column of the annotation files: 1 = cat, 2 = dog.
SPECIES_DIRS = {1: "cats", 2: "dogs"}
# list.txt covers every image; the split files are read too in case list.txt is absent.
ANNOTATION_FILES = ("list.txt", "trainval.txt", "test.txt")


class Record(NamedTuple):
    image: str  # file stem, e.g. "Abyssinian_100"
    class_id: int  # breed, 1..37
    species: int  # 1 = cat, 2 = dog


def _pet_dir(pet_root: Path) -> Path:
    # Accept both the torchvision root and the oxford-iiit-pet folder inside it.
    return pet_root / PET_DIR if (pet_root / PET_DIR).is_dir() else pet_root


def read_annotations(pet_root: Path) -> list[Record]:
    """Parse `Image CLASS-ID SPECIES BREED-ID` lines; each image once, in file order."""
    ann_dir = _pet_dir(pet_root) / "annotations"
    files = [ann_dir / name for name in ANNOTATION_FILES if (ann_dir / name).is_file()]
    if not files:
        raise FileNotFoundError(f"no annotation files ({', '.join(ANNOTATION_FILES)}) in {ann_dir}")
    records: dict[str, Record] = {}
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                record = Record(fields[0], int(fields[1]), int(fields[2]))
            except (IndexError, ValueError):
                # A garbled annotation means a broken download; say where instead of guessing.
                raise ValueError(f"{path}:{lineno}: cannot parse {line!r}") from None
            if record.species in SPECIES_DIRS:
                records.setdefault(record.image, record)
    return list(records.values())


def select(records: list[Record], max_per_class: int | None) -> list[Record]:
    """Keep at most `max_per_class` images per species, deterministically.

    Breeds are taken round-robin (sorted by name within a breed) so a small set still
    covers every breed instead of only the alphabetically first few.
    """
    if max_per_class is None:
        return list(records)
    chosen: list[Record] = []
    for species in sorted(SPECIES_DIRS):
        by_breed: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            if record.species == species:
                by_breed[record.class_id].append(record)
        queues = [sorted(by_breed[breed]) for breed in sorted(by_breed)]
        picked: list[Record] = []
        for depth in range(max((len(q) for q in queues), default=0)):
            picked.extend(q[depth] for q in queues if depth < len(q))
        chosen.extend(picked[:max_per_class])
    return chosen


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # e.g. OUT on another filesystem: a copy still works
    # Copy to a temp name then rename, so an interrupted run never leaves a truncated
    # image that the next (idempotent) run would mistake for a finished one.
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def convert(
    pet_root: Path, out_dir: Path, *, link: bool = False, max_per_class: int | None = None
) -> dict[str, int]:
    """Copy (or hard-link) pet images into out_dir/cats and out_dir/dogs.

    Re-running is safe: files already in place are left alone. Returns counts:
    cats/dogs (images now in place from this selection), written (new this run),
    existing (already there), missing (listed but absent from images/).
    """
    images_dir = _pet_dir(pet_root) / "images"
    records = read_annotations(pet_root)
    present = [r for r in records if (images_dir / f"{r.image}.jpg").is_file()]
    counts = {"cats": 0, "dogs": 0, "written": 0, "existing": 0, "missing": 0}
    counts["missing"] = len(records) - len(present)
    # Choose among images that exist so --max-per-class really yields N per class.
    for record in select(present, max_per_class):
        species_dir = SPECIES_DIRS[record.species]
        dst = out_dir / species_dir / f"{record.image}.jpg"
        if dst.exists():
            counts["existing"] += 1
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _place(images_dir / f"{record.image}.jpg", dst, link)
            counts["written"] += 1
        counts[species_dir] += 1
    return counts


def download(root: Path) -> Path:
    """Fetch both splits into root (no-op if already there); return the pet folder."""
    # Imported here because torch is slow to import and only this step needs it.
    from torchvision.datasets import OxfordIIITPet

    for split in ("trainval", "test"):
        OxfordIIITPet(root, split=split, target_types="category", download=True)
    return root / PET_DIR


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download Oxford-IIIT Pet and write it as OUT/cats and OUT/dogs."
    )
    parser.add_argument("--out", type=Path, required=True, help="catnet data folder to write")
    parser.add_argument("--root", type=Path, help="download cache (default: OUT/.download)")
    parser.add_argument("--link", action="store_true", help="hard-link instead of copying")
    parser.add_argument(
        "--max-per-class", type=_positive_int, metavar="N", help="keep at most N cats and N dogs"
    )
    args = parser.parse_args(argv)
    root: Path = args.root or args.out / ".download"

    print(f"Downloading Oxford-IIIT Pet (~800 MB) into {root} (skipped if already there) ...")
    try:
        pet_root = download(root)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # network, checksum, disk, missing torchvision: all end the same way
        print(f"error: could not download the Oxford-IIIT Pet dataset: {exc}", file=sys.stderr)
        print("Check your internet connection and free disk space, then re-run.", file=sys.stderr)
        return 1

    try:
        counts = convert(pet_root, args.out, link=args.link, max_per_class=args.max_per_class)
    except (OSError, ValueError) as exc:
        print(f"error: could not convert {pet_root}: {exc}", file=sys.stderr)
        return 1

    if counts["missing"]:
        print(f"warning: {counts['missing']} listed images were missing; skipped", file=sys.stderr)
    print(
        f"{args.out}: {counts['cats']} cats, {counts['dogs']} dogs "
        f"({counts['written']} new, {counts['existing']} already there)"
    )
    print(f"The download cache {root} can be deleted once you are done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
