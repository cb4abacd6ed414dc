"""Which logged pictures fine-tuning weights up: the ones the model got wrong. corrections.csv's
last column, model_label, keeps what the model said when the answer was given; a picture tagged
the way the model already said is ordinary data. Logs from before that column still read, and
every row in them is weighted up as before."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import TrainedRun, make_dataset, tiny_config, write_class

from catnet.config import LabelConfig
from catnet.curation.corrections import correct, corrected_paths, undo
from catnet.labelling.session import open_session
from catnet.training.prepare import prepare_data

OLD_HEADER = "time,sha256,old_label,new_label,source,dest\n"  # before model_label


def labelled_dir(tmp_path: Path) -> Path:
    data = make_dataset(tmp_path / "data", n_per_class=6)
    write_class(data / "unlabeled", "cats", 3, 24, start=100)
    write_class(data / "unlabeled", "dogs", 3, 24, start=100)
    return data


def log_lines(data: Path) -> list[str]:
    return (data / ".catnet" / "corrections.csv").read_text().splitlines()


def weighted(data: Path, tmp_path: Path) -> dict[str, int]:
    """File name -> times shown per epoch, for the training pictures shown more than once."""
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "cache")
    (tmp_path / "run").mkdir(exist_ok=True)
    prepared = prepare_data(cfg, tmp_path / "run", lambda _m: None, lambda _d, _t: None)
    assert prepared.train_repeat is not None
    return {
        p.name: int(r)
        for p, r in zip(prepared.train_paths, prepared.train_repeat, strict=True)
        if r > 1
    }


def test_only_pictures_the_model_had_wrong_are_weighted(
    trained: TrainedRun, tmp_path: Path
) -> None:
    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), trained.best)
    session.rank()  # the page's scores, as the Label queue shows them
    right, wrong = data / "unlabeled" / "cats_100.png", data / "unlabeled" / "dogs_100.png"
    said_right, said_wrong = session.model_label(right), session.model_label(wrong)
    assert said_right in ("cat", "not_cat") and said_wrong in ("cat", "not_cat")
    session.label(right, said_right)  # the model had it right
    other = "not_cat" if said_wrong == "cat" else "cat"
    undo_id = session.label(wrong, other)  # the model had it wrong: a correction
    rows = list(csv.DictReader(log_lines(data)))
    assert [(r["new_label"], r["model_label"]) for r in rows] == [
        (said_right, said_right),
        (other, said_wrong),
    ]
    assert {Path(p).name for p in corrected_paths(data)} == {"dogs_100.png"}
    assert weighted(data, tmp_path) == {"dogs_100.png": 4}
    lines = log_lines(data)
    session.undo(undo_id)  # exactly that row leaves the log, model_label and all
    assert log_lines(data) == lines[:-1]
    assert corrected_paths(data) == set()


def test_pictures_tagged_with_no_model_yet_are_ordinary_data(tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), None)
    assert session.model_label(data / "unlabeled" / "cats_100.png") == "none"
    session.label(data / "unlabeled" / "cats_100.png", "cat")
    (row,) = csv.DictReader(log_lines(data))
    assert row["model_label"] == "none" and corrected_paths(data) == set()


def test_a_correction_by_hand_is_weighted_as_before(tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    (done,) = correct(data, [data / "dogs" / "dogs_1.png"], "cat")  # `catnet correct --truth`
    (row,) = csv.DictReader(log_lines(data))
    assert row["model_label"] == ""  # unknown: a lesson
    assert weighted(data, tmp_path) == {"dogs_1.png": 4}
    undo(data, done)
    assert len(log_lines(data)) == 1 and (data / "dogs" / "dogs_1.png").is_file()


def test_an_old_log_still_weights_every_row_and_grows_a_column(tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    old = [data / "cats" / "cats_1.png", data / "dogs" / "dogs_2.png"]
    log = data / ".catnet" / "corrections.csv"
    log.parent.mkdir()
    with log.open("w", newline="") as fh:
        fh.write(OLD_HEADER)
        for i, path in enumerate(old):
            label = "cat" if path.parent.name == "cats" else "not_cat"
            csv.writer(fh).writerow(["2025-01-01T00:00:00", f"h{i}", "new", label, "x", path])
    assert corrected_paths(data) == {str(p.resolve()) for p in old}
    (done,) = correct(data, [data / "unlabeled" / "cats_100.png"], "cat", model_label="cat")
    lines = log_lines(data)
    assert lines[0] == OLD_HEADER.strip() + ",model_label"  # one table for any CSV reader
    assert [r["model_label"] for r in csv.DictReader(lines)] == ["", "", "cat"]
    assert corrected_paths(data) == {str(p.resolve()) for p in old}  # the new one is right
    assert weighted(data, tmp_path) == {"cats_1.png": 4, "dogs_2.png": 4}
    undo(data, done)
    assert log_lines(data) == lines[:-1]
