"""evaluate and predict in-process: which pictures are scored, and that both agree."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TrainedRun, prob_tol, write_class

from catnet.config import EvaluateConfig, PredictConfig
from catnet.errors import CatnetError
from catnet.evaluating.evaluation import evaluate
from catnet.predicting.outputs import Prediction, RowWriter, done_paths, expand_inputs
from catnet.predicting.prediction import predict

MakeDataset = Callable[..., Path]
CORE = ("path", "label", "p_cat", "error", "model")  # columns every output row has


def collect(checkpoint: Path, inputs: list[str], **kwargs: object) -> list[Prediction]:
    rows: list[Prediction] = []
    predict(checkpoint, inputs, on_row=rows.append, **kwargs)  # type: ignore[arg-type]
    return rows


def test_flat_folder_evaluates_every_picture(trained: TrainedRun) -> None:
    result = evaluate(trained.best, trained.data)
    m = result.metrics
    assert m["split"] == "all" and m["n"] == 24 and m["skipped"] == 1
    assert result.skipped == [(str(trained.broken), result.skipped[0][1])]
    assert sum(s.label for s in result.samples) == 12
    # p(cat) is the logit divided by the checkpoint's temperature, through a sigmoid, and the
    # accuracy counts those p(cat) against the folder labels at the threshold.
    temperature = torch.load(trained.best, weights_only=True)["temperature"]
    torch.testing.assert_close(result.probs, torch.sigmoid(result.logits / temperature))
    labels = torch.tensor([s.label for s in result.samples])
    hits = ((result.probs >= m["threshold"]).long() == labels).float().mean().item()
    assert m["accuracy"] == pytest.approx(hits)


def test_split_folder_evaluates_test_else_val(
    trained: TrainedRun, tmp_path: Path, make_dataset: MakeDataset
) -> None:
    with_test = make_dataset(tmp_path / "a", n_per_class=4, layout="split")
    result = evaluate(trained.best, with_test)
    assert result.metrics["split"] == "test"
    assert all(s.path.parts[-3] == "test" for s in result.samples)
    no_test = make_dataset(tmp_path / "b", n_per_class=4, layout="split", splits=("train", "val"))
    assert evaluate(trained.best, no_test).metrics["split"] == "val"


def test_evaluate_uses_the_checkpoint_threshold_or_the_given_one(trained: TrainedRun) -> None:
    default = evaluate(trained.best, trained.data)
    assert default.metrics["threshold"] == 0.5
    everything = evaluate(trained.best, trained.data, EvaluateConfig(threshold=0.0))
    assert everything.metrics["recall"] == 1.0
    assert everything.metrics["confusion"]["fp"] == 12
    torch.testing.assert_close(everything.probs, default.probs, atol=prob_tol(), rtol=0)


def test_evaluate_finds_the_positive_class_by_other_names(
    trained: TrainedRun, tmp_path: Path
) -> None:
    # The model was trained with cats/; a folder that says cat/ still works, and --positive
    # picks any other name.
    write_class(tmp_path / "a" / "cat", "cats", 2, 24)
    write_class(tmp_path / "a" / "birds", "birds", 2, 24)
    result = evaluate(trained.best, tmp_path / "a")
    assert sum(s.label for s in result.samples) == 2
    write_class(tmp_path / "b" / "kittens", "cats", 2, 24)
    write_class(tmp_path / "b" / "birds", "birds", 2, 24)
    with pytest.raises(CatnetError):
        evaluate(trained.best, tmp_path / "b")
    result = evaluate(trained.best, tmp_path / "b", EvaluateConfig(positive="kittens"))
    assert sum(s.label for s in result.samples) == 2


def test_evaluate_with_nothing_readable(trained: TrainedRun, tmp_path: Path) -> None:
    (tmp_path / "d" / "cats").mkdir(parents=True)
    (tmp_path / "d" / "cats" / "a.jpg").write_text("x")
    with pytest.raises(CatnetError, match="could be read"):
        evaluate(trained.best, tmp_path / "d")


def test_evaluate_without_cache_gives_the_same_numbers(trained: TrainedRun) -> None:
    cached = evaluate(trained.best, trained.data)
    uncached = evaluate(trained.best, trained.data, EvaluateConfig(cache=False))
    torch.testing.assert_close(cached.logits, uncached.logits, atol=prob_tol(), rtol=0)


def test_predict_agrees_with_evaluate(trained: TrainedRun) -> None:
    result = evaluate(trained.best, trained.data)
    expected = {str(s.path): float(p) for s, p in zip(result.samples, result.probs, strict=True)}
    rows = collect(trained.best, [str(trained.data)])
    got = {r.path: r.p_cat for r in rows if r.label != "error"}
    assert set(got) == set(expected)
    for path, p in expected.items():
        assert got[path] == pytest.approx(p, abs=prob_tol()), path


def test_predict_batches_and_worker_processes_do_not_change_results(
    trained: TrainedRun, tmp_path: Path
) -> None:
    # 40 files: enough for decode_stream to start a process pool when workers > 1.
    write_class(tmp_path / "many", "cats", 20, 24)
    write_class(tmp_path / "many", "dogs", 19, 24)
    (tmp_path / "many" / "zz_broken.png").write_text("x")
    inputs = [str(tmp_path / "many")]
    one = collect(trained.best, inputs, cfg=PredictConfig(batch_size=5, workers=1))
    many = collect(trained.best, inputs, cfg=PredictConfig(batch_size=16, workers=2))
    assert len(one) == 40
    assert [r.path for r in one] == [r.path for r in many]  # input order is kept
    assert [r.label == "error" for r in one] == [r.label == "error" for r in many]
    assert one[-1].label == "error" and one[-1].p_cat is None
    for a, b in zip(one[:-1], many[:-1], strict=True):
        assert a.p_cat == pytest.approx(b.p_cat, abs=prob_tol())


def test_predict_unsure_band(trained: TrainedRun) -> None:
    rows = collect(trained.best, [str(trained.data / "dogs")], unsure=(0.0, 1.0))
    assert {r.label for r in rows} == {"unsure"}


def test_predict_threshold_one_makes_nothing_a_cat(trained: TrainedRun) -> None:
    summary = predict(trained.best, [str(trained.data / "dogs")], PredictConfig(threshold=1.01))
    assert summary["counts"]["cat"] == 0 and summary["counts"]["not_cat"] == 12
    assert summary["threshold"] == 1.01


def test_expand_inputs(tmp_path: Path) -> None:
    write_class(tmp_path / "f", "cats", 2, 8)
    (tmp_path / "f" / "notes.txt").write_text("x")
    write_class(tmp_path / "g", "dogs", 2, 8, fmt="jpg")
    found = list(
        expand_inputs(
            [str(tmp_path / "f"), str(tmp_path / "g" / "*.jpg"), str(tmp_path / "nope.png")]
        )
    )
    assert [p.name for p in found] == [
        "cats_0.png",
        "cats_1.png",
        "dogs_0.jpg",
        "dogs_1.jpg",
        "nope.png",
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_row_writer_and_done_paths(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    writer = RowWriter(path)
    writer.write(Prediction("a, b.png", "cat", 0.9).as_row("abc"))
    writer.write(Prediction("c.png", "error", None, "broken").as_row("abc"))
    writer.close()
    assert done_paths(path) == {"a, b.png", "c.png"}
    if suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {k: rows[0][k] for k in CORE} == {
            "path": "a, b.png", "label": "cat", "p_cat": "0.9", "error": "", "model": "abc"
        }  # fmt: skip
        assert rows[1]["p_cat"] == ""
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert {k: rows[1][k] for k in CORE} == {
            "path": "c.png", "label": "error", "p_cat": None, "error": "broken", "model": "abc"
        }  # fmt: skip
    appended = RowWriter(path, append=True)
    appended.write(Prediction("d.png", "not_cat", 0.1).as_row("abc"))
    appended.close()
    assert done_paths(path) == {"a, b.png", "c.png", "d.png"}
    with path.open() as fh:  # one header at most
        assert sum(line.startswith("path,") for line in fh) == (1 if suffix == ".csv" else 0)


def test_done_paths_ignores_a_row_cut_off_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"path": "a.png", "label": "cat"}\n{"path": "b.p')
    assert done_paths(path) == {"a.png"}
