"""Training: the run folder, reproducibility, resuming, early stopping, skipped files, schedules."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TrainedRun, single_thread, write_class
from PIL import Image

import catnet.training.steps
from catnet.config import TrainConfig, from_dict, read_toml
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint
from catnet.training.loop import TrainCallbacks, train
from catnet.training.prepare import auto_image_size
from catnet.training.runs import METRIC_COLUMNS, read_metrics
from catnet.training.schedule import EarlyStopping, epochs_that_fit, lr_factor
from catnet.training.state import resume_config

MakeDataset = Callable[..., Path]
TinyConfig = Callable[..., TrainConfig]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# --- the run folder ---------------------------------------------------------------------------


def test_run_folder_contents(trained: TrainedRun) -> None:
    run = trained.run_dir
    for name in ("config.toml", "metrics.csv", "best.pt", "last.pt", "skipped.txt", "curves.png"):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]
    with Image.open(run / "curves.png") as img:
        assert img.format == "PNG" and img.width > 100


def test_metrics_csv(trained: TrainedRun) -> None:
    path = trained.run_dir / "metrics.csv"
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert tuple(header) == METRIC_COLUMNS
    rows = read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["train_loss"] > 0 and r["val_loss"] > 0
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
        assert r["lr"] > 0 and r["seconds"] >= 0
    assert rows[1]["seconds"] >= rows[0]["seconds"]


def test_config_toml_is_the_resolved_config(trained: TrainedRun) -> None:
    saved = from_dict(TrainConfig, read_toml(trained.run_dir / "config.toml"))
    assert saved.data == str(trained.data)
    assert saved.image_size == 24
    assert (saved.model, saved.width, saved.depth, saved.epochs) == ("cnn", 8, 2, 2)


def test_unreadable_files_are_skipped_and_listed(trained: TrainedRun) -> None:
    lines = (trained.run_dir / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1
    path, reason = lines[0].split("\t")
    assert path == str(trained.broken)
    assert "not a picture" in reason
    assert trained.result.skipped == 1
    summary = load_checkpoint(trained.best)["data_summary"]
    counts = summary["counts"]
    assert summary["skipped"] == 1
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 24


def test_train_result(trained: TrainedRun) -> None:
    r = trained.result
    assert r.epochs_run == 2 and len(r.history) == 2
    assert r.best_epoch in (1, 2)
    assert r.best_checkpoint == trained.best and r.last_checkpoint == trained.last
    assert r.stop_reason == "finished the planned epochs"
    assert r.metrics["n"] == sum(
        load_checkpoint(trained.best)["data_summary"]["counts"]["val"].values()
    )
    assert r.diagnosis["verdict"] in ("good", "overfit", "underfit", "unknown")


# --- reproducibility and resuming ---------------------------------------------------------------


def test_same_seed_same_results(trained: TrainedRun, tmp_path: Path) -> None:
    with single_thread():  # as the `trained` fixture ran
        again = train(dataclasses.replace(trained.config, out=str(tmp_path / "again")))
    first = csv_rows(trained.run_dir / "metrics.csv")
    second = csv_rows(again.run_dir / "metrics.csv")
    assert without_seconds(first) == without_seconds(second)
    assert (
        load_checkpoint(again.best_checkpoint)["weights_sha256"]
        == load_checkpoint(trained.best)["weights_sha256"]
    )


def test_other_seed_other_results(trained: TrainedRun, tmp_path: Path) -> None:
    other = train(
        dataclasses.replace(trained.config, out=str(tmp_path / "other"), seed=1, epochs=1)
    )
    first = csv_rows(trained.run_dir / "metrics.csv")[:1]
    assert without_seconds(csv_rows(other.run_dir / "metrics.csv")) != without_seconds(first)


def test_resume_continues_without_duplicate_rows(trained: TrainedRun, tmp_path: Path) -> None:
    run = trained.copy_run(tmp_path / "run")
    before = (run / "metrics.csv").read_text().splitlines()
    cfg = resume_config(str(run / "last.pt"), {"epochs": 3, "cache_dir": str(tmp_path / "c")})
    assert cfg.resume == str(run / "last.pt") and cfg.epochs == 3
    assert cfg.width == 8 and cfg.data == str(trained.data)  # the run's own settings
    result = train(cfg)
    assert result.run_dir == run
    after = (run / "metrics.csv").read_text().splitlines()
    assert [int(float(r["epoch"])) for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]
    assert after[:3] == before  # header and epochs 1-2 unchanged
    assert result.epochs_run == 3 and len(result.history) == 3
    assert load_checkpoint(run / "last.pt")["resume"]["epoch"] == 3


def test_resume_needs_last_pt(trained: TrainedRun) -> None:
    with pytest.raises(CatnetError, match=r"last\.pt"):
        resume_config(str(trained.best), {})


# --- stopping, skipping, failing ------------------------------------------------------------------


@pytest.mark.slow
def test_early_stopping(tmp_path: Path, make_dataset: MakeDataset, tiny_config: TinyConfig) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=6, layout="split", splits=("train", "val"))
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "c", epochs=6, patience=1, min_delta=1e6)
    result = train(cfg)
    assert result.epochs_run == 2
    assert result.best_epoch == 1
    assert "early stopping" in result.stop_reason
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 2
    counts = load_checkpoint(result.best_checkpoint)["data_summary"]["counts"]
    assert counts["val"] == {"cats": 3, "dogs": 3}  # the val/ folder, not a random split
    assert counts["train"] == {"cats": 6, "dogs": 6}


@pytest.mark.slow
def test_mlp_trains(tmp_path: Path, make_dataset: MakeDataset, tiny_config: TinyConfig) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=6, size=16)
    cfg = tiny_config(
        data, tmp_path / "run", tmp_path / "c", model="mlp", hidden=[16], image_size=16,
        epochs=1, augment=False, activation="tanh",
    )  # fmt: skip
    result = train(cfg)
    arch = load_checkpoint(result.best_checkpoint)["arch"]
    assert arch == {
        "type": "mlp",
        "image_size": 16,
        "hidden": [16],
        "activation": "tanh",
        "dropout": cfg.dropout,
    }


def test_readable_training_pictures_must_hold_both_classes(
    tmp_path: Path, tiny_config: TinyConfig
) -> None:
    write_class(tmp_path / "d" / "cats", "cats", 6, 16)
    (tmp_path / "d" / "dogs").mkdir()
    for i in range(6):
        (tmp_path / "d" / "dogs" / f"dog_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    with pytest.raises(CatnetError, match="one class"):
        train(tiny_config(tmp_path / "d", tmp_path / "run", tmp_path / "c"))
    skipped = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 6


def test_no_data_folder(tmp_path: Path, tiny_config: TinyConfig) -> None:
    with pytest.raises(CatnetError, match="not found"):
        train(tiny_config(tmp_path / "missing", tmp_path / "run", tmp_path / "c"))


@pytest.mark.slow
def test_nan_loss_is_a_clear_error(
    tmp_path: Path,
    make_dataset: MakeDataset,
    tiny_config: TinyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = catnet.training.steps.bce_loss

    def poisoned(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> Any:
        return real(logits, labels, smoothing) * float("nan")

    monkeypatch.setattr(catnet.training.steps, "bce_loss", poisoned)
    data = make_dataset(tmp_path / "d", n_per_class=4, size=16)
    with pytest.raises(CatnetError, match="diverged") as info:
        train(tiny_config(data, tmp_path / "run", tmp_path / "c", image_size=16))
    assert "nan" in info.value.message.lower()
    assert "--lr" in info.value.message


@pytest.mark.slow
def test_callbacks_are_called(
    tmp_path: Path, make_dataset: MakeDataset, tiny_config: TinyConfig
) -> None:
    events: list[str] = []

    class Recorder(TrainCallbacks):
        def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None:
            events.append(f"start {epoch}/{planned_epochs}")

        def on_batch(self, step: int, steps: int, loss: float) -> None:
            assert math.isfinite(loss)
            events.append("batch")

        def on_epoch_end(self, row: dict[str, Any]) -> None:
            events.append(f"end {row['epoch']}")

    data = make_dataset(tmp_path / "d", n_per_class=5, size=16)
    train(tiny_config(data, tmp_path / "run", tmp_path / "c", image_size=16, epochs=1), Recorder())
    assert events[0] == "start 1/1" and events[-1] == "end 1" and "batch" in events


def test_auto_image_size(tmp_path: Path) -> None:
    from catnet.data.folders import Sample

    samples = []
    for i, (w, h) in enumerate([(100, 60), (120, 64), (90, 70)]):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        samples.append(Sample(tmp_path / f"{i}.png", 1, "cats"))
    assert auto_image_size(samples, cap=96) == 64
    assert auto_image_size(samples, cap=48) == 48
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10)).save(tiny)
    assert auto_image_size([Sample(tiny, 1, "cats")], cap=96) == 32


# --- schedules --------------------------------------------------------------------------------


def test_warmup_rises_linearly_from_a_tenth() -> None:
    for schedule in ("cosine", "onecycle", "step"):
        assert lr_factor(schedule, 0.0, 0.1) == pytest.approx(0.1)
        assert lr_factor(schedule, 0.05, 0.1) == pytest.approx(0.55)
        assert lr_factor(schedule, 0.1, 0.1) == pytest.approx(1.0)


def test_cosine_decays_to_near_zero() -> None:
    values = [lr_factor("cosine", p / 100, 0.1) for p in range(10, 101)]
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_factor("cosine", 0.55, 0.1) == pytest.approx(0.5)


def test_onecycle_is_linear_to_zero() -> None:
    assert lr_factor("onecycle", 0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor("onecycle", 1.0, 0.1) == pytest.approx(0.0)


def test_step_drops_tenfold_at_half_and_three_quarters() -> None:
    assert lr_factor("step", 0.3, 0.0) == 1.0
    assert lr_factor("step", 0.6, 0.0) == pytest.approx(0.1)
    assert lr_factor("step", 0.9, 0.0) == pytest.approx(0.01)


def test_none_schedule_and_clamping() -> None:
    assert lr_factor("none", 0.0, 0.3) == 1.0
    assert lr_factor("cosine", -1.0, 0.0) == pytest.approx(1.0)
    assert lr_factor("cosine", 2.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        lr_factor("exponential", 0.5, 0.1)


def test_early_stopping_rules() -> None:
    stop = EarlyStopping(patience=2, min_delta=0.1, mode="min")
    assert stop.update(1.0, 1)
    assert not stop.update(0.95, 2)  # better, but by less than min_delta
    assert not stop.should_stop
    assert stop.update(0.5, 3)
    assert not stop.update(0.6, 4) and not stop.update(0.7, 5)
    assert stop.should_stop and stop.best_epoch == 3
    maximise = EarlyStopping(patience=0, mode="max")
    assert maximise.update(0.2, 1) and maximise.update(0.3, 2) and not maximise.update(0.1, 3)
    assert not maximise.should_stop  # patience 0 = off
    assert EarlyStopping(**maximise.state()) == maximise


def test_epochs_that_fit() -> None:
    assert epochs_that_fit(100, 10, 0, 30) == 10
    assert epochs_that_fit(100, 10, 5, 8) == 8
    assert epochs_that_fit(-5, 10, 3, 30) == 3
    assert epochs_that_fit(100, 0, 0, 30) == 30


@pytest.mark.slow
def test_the_lr_schedule_spans_the_steps_corrected_pictures_add(
    tmp_path: Path, make_dataset: MakeDataset, tiny_config: TinyConfig
) -> None:
    """A corrected picture is shown correction_weight times an epoch, so an epoch has more
    steps; the schedule must be planned over them (it was planned over one showing each, and
    the learning rate reached the schedule's end before the last epoch). Fails on the loop
    before run_epochs: 10 steps planned, 12 taken."""
    from catnet.curation.corrections import correct

    data = make_dataset(tmp_path / "d", n_per_class=12, size=16)
    correct(data, [data / "dogs" / "dogs_1.png"], "cat")  # shown 4 times an epoch
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "c", image_size=16, batch_size=4)
    resume = load_checkpoint(train(cfg).last_checkpoint)["resume"]
    assert resume["step"] == resume["total_steps"]


@pytest.mark.slow
def test_the_pretrained_recipe_reports_its_batches(
    tmp_path: Path, make_dataset: MakeDataset, tiny_config: TinyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The default recipe runs the same loop as the others, progress callbacks included (its
    own loop never called on_batch: the batch bar stood still). Fails on the old feature loop."""
    events: list[tuple[int, int]] = []

    class Recorder(TrainCallbacks):
        def on_batch(self, step: int, steps: int, loss: float) -> None:
            assert math.isfinite(loss)
            events.append((step, steps))

    data = make_dataset(tmp_path / "d", n_per_class=8)
    cfg = dict(model="pretrained", image_size=64, batch_size=8)
    train(tiny_config(data, tmp_path / "small", tmp_path / "c", **cfg), Recorder())
    assert events == [(1, 1)]  # the full-batch head fit: one "batch"
    events.clear()
    from catnet.training import recipes

    monkeypatch.setattr(recipes, "FULL_BATCH_PHOTOS", 0)  # minibatch epochs, as for a large set
    train(tiny_config(data, tmp_path / "large", tmp_path / "c", epochs=2, **cfg), Recorder())
    steps = events[0][1]
    assert steps > 1 and events == [(i, steps) for i in range(1, steps + 1)] * 2
