"""One vocabulary for users: every row names its picture `path` and its `label` is the model's
answer (`truth` the folder's tag); files written with the older names still read back."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import write_class

from catnet.curation.corrections import correct_from_file


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """data/cats/cats_0..1.png and data/dogs/dogs_0..1.png."""
    root = tmp_path / "data"
    write_class(root / "cats", "cats", 2, 24)
    write_class(root / "dogs", "dogs", 2, 24)
    return root


def rows_file(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def mistake(path: Path, answer: str, p_cat: float, truth: str, **more: object) -> dict[str, object]:
    """A mistakes.csv row as evaluate --report writes it: label = the model's answer."""
    return {"path": str(path), "label": answer, "p_cat": p_cat, "error": "", "model": "m",
            "threshold": 0.5, "unfamiliar": "", "unfamiliar_score": "", **more,
            "truth": truth}  # fmt: skip


def test_mistakes_csv_truth_edited_is_applied_unedited_changes_nothing(
    data: Path, tmp_path: Path
) -> None:
    dog_called_cat = mistake(data / "dogs" / "dogs_0.png", "cat", 0.9, "not_cat")
    cat_called_dog = mistake(data / "cats" / "cats_0.png", "not_cat", 0.2, "cat")
    # An unfamiliar cat: p(cat) over the threshold, yet the model's answer was not_cat.
    unfamiliar = mistake(data / "cats" / "cats_1.png", "not_cat", 0.8, "cat", unfamiliar="true")
    rows = [dog_called_cat, cat_called_dog, unfamiliar]
    assert correct_from_file(data, rows_file(tmp_path / "mistakes.csv", rows)) == []

    dog_called_cat["truth"] = "cat"  # the folder was wrong: it is a cat
    (done,) = correct_from_file(data, rows_file(tmp_path / "edited.csv", rows))
    assert done.new_label == "cat" and done.dest == data / "cats" / "dogs_0.png"
    assert not (data / "dogs" / "dogs_0.png").exists()


def test_an_old_mistakes_csv_still_reads(data: Path, tmp_path: Path) -> None:
    """Before `truth`: label was the folder's tag (the column to edit), predicted the answer."""
    old = [
        {"path": str(data / "dogs" / "dogs_0.png"), "label": "cat", "p_cat": 0.9, "error": "",
         "model": "m", "threshold": 0.5, "folder_label": "not_cat", "predicted": "cat"},
        {"path": str(data / "cats" / "cats_0.png"), "label": "cat", "p_cat": 0.2, "error": "",
         "model": "m", "threshold": 0.5, "folder_label": "cat", "predicted": "not_cat"},
    ]  # fmt: skip
    (done,) = correct_from_file(data, rows_file(tmp_path / "old.csv", old))
    assert done.dest == data / "cats" / "dogs_0.png"  # the edited row only
    assert (data / "cats" / "cats_0.png").exists()


def test_rows_naming_the_picture_input_still_read(data: Path, tmp_path: Path) -> None:
    """explain's index.csv before `path`: `input`, with label edited from the model's answer."""
    old = [{"input": str(data / "cats" / "cats_0.png"), "output": "x.png", "p_cat": 0.9,
            "label": "not_cat", "explained": "cat", "method": "grad-cam", "error": ""}]  # fmt: skip
    (done,) = correct_from_file(data, rows_file(tmp_path / "index.csv", old))
    assert done.new_label == "not_cat" and done.dest == data / "not_cat" / "cats_0.png"
