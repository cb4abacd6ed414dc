"""`catnet check`: find what is wrong with a folder of tagged pictures before training on it.

Reports unreadable files, odd colour modes, tiny pictures, exact and near duplicates, pictures
leaking between train and val/test, and extensions that lie about the format. `--fix` moves
unreadable files into DATA_DIR/.catnet/quarantine/ (never deletes); `--undo` puts them back.
Paths in the report are relative to DATA_DIR; non-UTF-8 names are kept lossless as
surrogate-escaped str (os.fsdecode), which json.dumps writes as \\udcXX escapes.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from catnet.curation.fingerprints import Progress, fingerprint_files, groups_from_pairs, near_pairs
from catnet.data.folders import SPLIT_NAMES, printable, scan_dataset
from catnet.errors import EXIT_SOME_FAILED, CatnetError, WriteFailed, write_reason
from catnet.runtime.files import atomic_write_text, create_new, move_new

TINY_SIDE = 32
NEAR_DISTANCE = 4
PLAIN_MODES = {"RGB", "L"}
EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}  # fmt: skip
QUARANTINE = Path(".catnet") / "quarantine"


# ---------------------------------------------------------------------------------------------
# The whole folder


def check_dataset(
    root: str | Path,
    positive: str = "",
    workers: int = 0,
    max_pixels: int = 120_000_000,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Inspect every file under root the way training would see it; a JSON-ready report."""
    dataset = scan_dataset(root, positive, require_both=False)
    samples = sorted(dataset.train + dataset.val + dataset.test, key=lambda s: str(s.path))
    files = []
    for s in samples:
        rel = s.path.relative_to(dataset.root)
        split = SPLIT_NAMES[rel.parts[0].lower()] if dataset.layout == "split" else "all"
        files.append({"path": rel.as_posix(), "split": split, "class": s.class_name})
    facts = fingerprint_files([str(s.path) for s in samples], max_pixels, workers, on_progress)
    for f, fact in zip(files, facts, strict=True):
        f.update(fact)
    good = [f for f in files if "reason" not in f]
    report: dict[str, Any] = {
        "root": os.fsdecode(dataset.root), "layout": dataset.layout,
        "positive": dataset.positive, "classes": dataset.classes,
        "n_files": len(files), "n_images": len(good), "counts": _counts(files, dataset.classes),
        "unreadable": [{"path": f["path"], "reason": f["reason"]} for f in files if "reason" in f],
        "odd_modes": [{"path": f["path"], "mode": f["mode"]} for f in good
                      if f["mode"] not in PLAIN_MODES],
        "tiny": [{"path": f["path"], "width": f["size"][0], "height": f["size"][1]} for f in good
                 if min(f["size"]) < TINY_SIDE],
        "lying_extensions": _lying_extensions(good),
    }  # fmt: skip
    report.update(_duplicates(good, dataset.layout))
    return report


def _counts(files: list[dict[str, Any]], classes: list[str]) -> dict[str, dict[str, int]]:
    """Readable pictures per split and class; every class listed, so an empty one shows 0."""
    counts: dict[str, dict[str, int]] = {}
    for f in files:
        per_class = counts.setdefault(f["split"], dict.fromkeys(classes, 0))
        per_class[f["class"]] += "reason" not in f
    order = ["train", "val", "test", "all"]
    return {split: counts[split] for split in order if split in counts}


def _lying_extensions(good: list[dict[str, Any]]) -> list[dict[str, str]]:
    lies = []
    for f in good:
        ext = os.path.splitext(f["path"])[1].lower()
        expected = EXTENSION_FORMATS.get(ext)
        if expected and f["format"] != expected:
            lies.append({"path": f["path"], "extension": ext, "format": f["format"]})
    return lies


def _duplicates(good: list[dict[str, Any]], layout: str) -> dict[str, Any]:
    """Exact copies (same SHA-256), near copies (dHash within NEAR_DISTANCE bits, one
    representative per distinct content) and groups of either that span splits."""
    by_sha: dict[str, list[int]] = {}
    for i, f in enumerate(good):
        by_sha.setdefault(f["sha256"], []).append(i)
    reps = [members[0] for members in by_sha.values()]
    near = groups_from_pairs(len(reps), near_pairs((good[r]["dhash"] for r in reps), NEAR_DISTANCE))
    # One "picture" = a near group's contents plus all their exact copies: leaks compare those.
    pictures = [[i for r in group for i in by_sha[good[reps[r]]["sha256"]]] for group in near]
    in_near = {i for p in pictures for i in p}
    pictures += [m for m in by_sha.values() if len(m) > 1 and m[0] not in in_near]
    leaks = []
    for members in pictures if layout == "split" else []:
        splits = sorted({good[i]["split"] for i in members})
        if len(splits) > 1:
            kind = "exact" if len({good[i]["sha256"] for i in members}) == 1 else "near"
            paths = [good[i]["path"] for i in sorted(members)]
            leaks.append({"kind": kind, "splits": splits, "paths": paths})
    leaks.sort(key=lambda leak: leak["paths"])
    result: dict[str, Any] = {
        "duplicates": [[good[i]["path"] for i in m] for m in by_sha.values() if len(m) > 1],
        "near_duplicates": [[good[reps[r]]["path"] for r in group] for group in near],
        "leaks": leaks,
    }
    if layout == "flat":
        result["leak_note"] = (
            "flat layout: catnet makes the train/val split itself, so folders cannot leak; "
            "duplicates above may still land on both sides of that split"
        )
    return result


# ---------------------------------------------------------------------------------------------
# --fix and --undo: move, never delete


def _load_manifest(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["entries"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatnetError(
            f"cannot read the quarantine manifest {path}: {exc}",
            hint="fix or move that file by hand; the quarantined files are beside it",
        ) from None


def _save_manifest(path: Path, entries: list[dict[str, str]]) -> None:
    # ensure_ascii keeps non-UTF-8 names (surrogate escapes) lossless and the file plain ASCII.
    # Atomic: a crash leaves the old manifest, not half of a new one.
    text = json.dumps({"entries": entries}, indent=2, ensure_ascii=True) + "\n"
    atomic_write_text(path, text, what="the quarantine manifest")


def fix_dataset(root: str | Path, report: dict[str, Any]) -> Path:
    """Move every unreadable file of the report into root/.catnet/quarantine/ (same relative
    path), recording it in manifest.json. Returns the quarantine folder."""
    root = Path(root).expanduser()
    quarantine = root / QUARANTINE
    manifest = quarantine / "manifest.json"
    entries = _load_manifest(manifest)
    failed = []
    for item in report["unreadable"]:
        source = root / item["path"]
        try:
            (quarantine / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            # A name already quarantined gets name-1.ext: never replace an earlier file.
            target = create_new(quarantine / item["path"], partial(move_new, source))
        except OSError as exc:
            failed.append(f"{item['path']}: {write_reason(exc)}")
            continue
        entries.append({
            "original": item["path"], "quarantined": target.relative_to(quarantine).as_posix(),
            "reason": item["reason"], "time": datetime.now(UTC).isoformat(timespec="seconds"),
        })  # fmt: skip
        try:  # after each move: an interruption loses no record
            _save_manifest(manifest, entries)
        except WriteFailed:
            # No record, no move: what is in the quarantine can always be put back by --undo.
            entries.pop()
            with contextlib.suppress(OSError):
                os.rename(target, source)
            raise
    if failed:
        raise CatnetError(
            printable(f"could not move: {'; '.join(failed)}"), exit_code=EXIT_SOME_FAILED
        )
    return quarantine


def _inside(relative: str) -> bool:
    return not (Path(relative).is_absolute() or ".." in Path(relative).parts)


def undo_fix(root: str | Path) -> int:
    """Move every quarantined file back; returns how many. A file now at the original place is
    never overwritten: its entry stays in the manifest and the error names it."""
    root = Path(root).expanduser()
    manifest = root / QUARANTINE / "manifest.json"
    kept, conflicts, restored = [], [], 0
    for entry in _load_manifest(manifest):
        source, target = root / QUARANTINE / entry["quarantined"], root / entry["original"]
        problem = ""
        if not (_inside(entry["original"]) and _inside(entry["quarantined"])):
            problem = "outside the data folder"  # a hand-edited manifest must not move files out
        elif not os.path.lexists(source):
            conflicts.append(f"{entry['original']} (gone from the quarantine)")
            continue  # nothing left to restore: drop the entry
        else:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                move_new(source, target)
                restored += 1
                continue
            except FileExistsError:
                problem = "a file is there now"
            except OSError as exc:
                problem = write_reason(exc)
        kept.append(entry)
        conflicts.append(f"{entry['original']} ({problem})")
    if manifest.exists():
        _save_manifest(manifest, kept)
    if conflicts:
        raise CatnetError(
            printable(f"restored {restored}; left {len(conflicts)}: {'; '.join(conflicts)}"),
            exit_code=EXIT_SOME_FAILED,
            hint=f"move those by hand from {root / QUARANTINE}",
        )
    return restored
