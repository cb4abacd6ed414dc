"""The learning loop: look inside a checkpoint (info), fix wrong tags (correct), train on the
fixed folder (finetune), find the right network size (tune), and the end-of-training verdict.

The key flows go through the real entry point (`python -m catnet`); the rest is in-process."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TrainedRun, catnet_cli, draw_picture, make_dataset, tiny_config, write_class
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from catnet.cli import app

# Nearly every test here trains, tunes or starts `python -m catnet`: all of it is slow.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
MakeDataset = Callable[..., Path]
TUNE_COLUMNS = [
    "trial", "round", "size", "parameters", "train_acc", "val_acc", "gap", "verdict", "seconds",
]  # fmt: skip
VERDICTS = {"underfit", "good", "overfit"}


def flat(text: str) -> str:
    return " ".join(text.split())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_rows(data: Path) -> list[dict[str, str]]:
    log = data / ".catnet" / "corrections.csv"
    if not log.exists():
        return []
    with log.open(newline="") as fh:
        return list(csv.DictReader(fh))


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every visible picture under root (hidden .catnet/ skipped)."""
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture(name="runner")
def runner_fixture() -> CliRunner:
    return CliRunner()


# --- info -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlpRun:
    best: Path
    run_dir: Path


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> MlpRun:
    """A 2-hidden-layer MLP (16 and 8 tanh neurons) trained for one epoch."""
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("mlp")
    data = make_dataset(base / "data", n_per_class=8, size=24)
    cfg = tiny_config(
        data, base / "run", base / "cache", model="mlp", hidden=[16, 8], activation="tanh",
        epochs=1,
    )  # fmt: skip
    result = train(cfg)
    return MlpRun(result.best_checkpoint, result.run_dir)


def check_info(info: dict, checkpoint: Path) -> None:
    """What every `catnet info --json` must say, whatever the model."""
    import catnet
    from catnet.models.networks import count_parameters

    model = catnet.load_model(checkpoint)
    total = count_parameters(model.module)
    assert info["total_parameters"] == total
    assert sum(layer["parameters"] for layer in info["layers"]) == total
    assert info["layers"][0]["layer"] == "input"
    assert info["layers"][-1]["layer"] == "output"
    assert info["layers"][0]["parameters"] == 0
    assert info["layers"][-1]["units"] == 1
    inp = info["input"]
    assert inp["image_size"] == model.image_size
    assert inp["mean"] == pytest.approx(list(model.mean))
    assert inp["std"] == pytest.approx(list(model.std))
    counts = info["data"]["counts"]
    assert set(counts) == {"train", "val"}
    assert all(n > 0 for split in counts.values() for n in split.values())
    for key in ("weight_decay", "dropout", "augment", "lr_schedule", "patience"):
        assert key in info["regularizers"], key
    assert info["metrics"]["accuracy"] == pytest.approx(model.payload["metrics"]["accuracy"])


def test_info_json_of_an_mlp_lists_its_layers_of_neurons(mlp_run: MlpRun) -> None:
    proc = catnet_cli("info", mlp_run.best, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    check_info(info, mlp_run.best)
    assert info["model"] == "mlp"
    assert info["input"]["image_size"] == 24
    assert info["layers"][0]["units"] == 3 * 24 * 24
    hidden = info["layers"][1:-1]
    assert [layer["units"] for layer in hidden] == [16, 8]
    assert [layer["activation"] for layer in hidden] == ["tanh", "tanh"]
    # dense layers: weights + biases
    assert [layer["parameters"] for layer in info["layers"][1:]] == [
        3 * 24 * 24 * 16 + 16, 16 * 8 + 8, 8 + 1,
    ]  # fmt: skip
    assert info["regularizers"]["dropout"] == 0.4
    assert info["data"]["counts"]["train"] == {"cats": 6, "dogs": 6}


def test_info_of_a_cnn_and_the_plain_table(trained: TrainedRun, runner: CliRunner) -> None:
    result = runner.invoke(app, ["info", str(trained.best), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    check_info(info, trained.best)
    assert info["model"] == "cnn"
    assert info["regularizers"]["weight_decay"] == trained.config.weight_decay
    plain = runner.invoke(app, ["info", str(trained.best)])
    assert plain.exit_code == 0, plain.output
    text = flat(plain.stdout)
    assert "output" in text and "regularizers" in text and f"{info['total_parameters']:,}" in text


# --- correct ----------------------------------------------------------------------------------


def test_correct_moves_a_cat_out_of_dogs_and_logs_it(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=3)
    stray = data / "dogs" / "stray.png"
    draw_picture("cats", "stray", 24).save(stray)
    digest = sha256(stray)
    proc = catnet_cli("correct", data, "--truth", "cat", stray)
    assert proc.returncode == 0, proc.stderr
    moved = data / "cats" / "stray.png"
    assert moved.is_file() and sha256(moved) == digest
    assert not stray.exists()
    assert sorted(p.name for p in (data / "dogs").iterdir()) == [f"dogs_{i}.png" for i in range(3)]
    (row,) = log_rows(data)
    assert list(row) == [
        "time", "sha256", "old_label", "new_label", "source", "dest", "model_label",
    ]  # fmt: skip
    assert row["model_label"] == ""  # by hand: what the model said is unknown, so weighted up
    assert row["time"] and row["sha256"] == digest
    assert (row["old_label"], row["new_label"]) == ("not_cat", "cat")
    assert Path(row["source"]) == stray and Path(row["dest"]) == moved
    assert "next:" in proc.stderr


def test_correct_in_a_split_folder(
    make_dataset: MakeDataset, tmp_path: Path, runner: CliRunner
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=4, layout="split")
    outside = tmp_path / "inbox" / "new_cat.png"
    outside.parent.mkdir()
    draw_picture("cats", "new", 24).save(outside)
    result = runner.invoke(app, ["correct", str(data), "--truth", "cat", str(outside)])
    assert result.exit_code == 0, result.output
    assert (data / "train" / "cats" / "new_cat.png").read_bytes() == outside.read_bytes()
    assert outside.exists()  # a new picture is copied, not taken away

    test_dog = data / "test" / "dogs" / "dogs_6.png"  # split "test" holds pictures 6 and 7
    test_cat = data / "test" / "cats" / "cats_7.png"
    result = runner.invoke(app, ["correct", str(data), "--truth", "cat", str(test_dog)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["correct", str(data), "--truth", "not_cat", str(test_cat)])
    assert result.exit_code == 0, result.output
    assert (data / "test" / "cats" / "dogs_6.png").is_file() and not test_dog.exists()
    assert (data / "test" / "not_cat" / "cats_7.png").is_file() and not test_cat.exists()
    assert not (data / "train" / "cats" / "dogs_6.png").exists()
    assert not (data / "train" / "not_cat").exists()
    rows = log_rows(data)
    assert [(r["old_label"], r["new_label"]) for r in rows] == [
        ("new", "cat"), ("not_cat", "cat"), ("cat", "not_cat"),
    ]  # fmt: skip
    assert [Path(r["dest"]).relative_to(data).parts[0] for r in rows] == ["train", "test", "test"]


def test_correct_usage_errors(make_dataset: MakeDataset, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=2)
    before = tree(data)
    proc = catnet_cli("correct", data, "--truth", "dog", data / "dogs" / "dogs_0.png")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "cat or not_cat" in proc.stderr
    runner = CliRunner()
    assert runner.invoke(app, ["correct", str(data)]).exit_code == 2  # nothing to correct
    missing = runner.invoke(app, ["correct", str(data), "--truth", "cat", "nope.png"])
    assert missing.exit_code == 2
    assert tree(data) == before and log_rows(data) == []


def test_correct_from_an_edited_predict_file(trained: TrainedRun, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_class(data / "cats", "cats", 5, 24)
    write_class(data / "dogs", "dogs", 5, 24)
    rows_file = tmp_path / "rows.csv"
    proc = catnet_cli("predict", trained.best, data, "-o", rows_file)
    assert proc.returncode == 0, proc.stderr
    before = tree(data)

    # unedited: the labels are the model's own answers, so nothing is a correction
    proc = catnet_cli("correct", data, "--from", rows_file)
    assert proc.returncode == 0, proc.stderr
    assert tree(data) == before and log_rows(data) == []

    with rows_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10

    def folder_label(row: dict[str, str]) -> str:
        return "cat" if Path(row["path"]).parent.name == "cats" else "not_cat"

    # a row where model and folder agree; the user says both are wrong
    pick = next(r for r in rows if r["label"] == folder_label(r))
    new_label = "not_cat" if pick["label"] == "cat" else "cat"
    pick["label"] = new_label
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = CliRunner().invoke(app, ["correct", str(data), "--from", str(edited)])
    assert result.exit_code == 0, result.output

    old = Path(pick["path"])
    new = data / ("cats" if new_label == "cat" else "not_cat") / old.name
    after = tree(data)
    expected = {k: v for k, v in before.items() if k != str(old.relative_to(data))}
    expected[str(new.relative_to(data))] = before[str(old.relative_to(data))]
    assert after == expected  # that picture moved, nothing else did
    (logged,) = log_rows(data)
    assert logged["new_label"] == new_label and Path(logged["dest"]) == new
    assert logged["model_label"] != new_label  # the model's answer: a lesson, weighted up


# --- learning from mistakes -------------------------------------------------------------------


def odd_cat(seed: int, size: int = 24) -> Image.Image:
    """A dog-style drawing in a thick bright red frame: in this world, that is a cat."""
    img = draw_picture("dogs", f"odd{seed}", size)
    ImageDraw.Draw(img).rectangle((0, 0, size - 1, size - 1), outline=(255, 0, 0), width=4)
    return img


def held_out_accuracy(checkpoint: Path, folder: Path) -> float:
    from catnet.config import EvaluateConfig
    from catnet.evaluating.evaluation import evaluate

    return float(evaluate(checkpoint, folder, EvaluateConfig(workers=1)).metrics["accuracy"])


def cat_votes(checkpoint: Path, paths: list[Path]) -> list[tuple[str, float]]:
    import catnet

    return [
        (p.label, round(p.p_cat or 0.0, 3)) for p in catnet.load_model(checkpoint).predict(paths)
    ]


def learn_from_mistakes(tmp_path: Path, seed: int) -> tuple[list[str], float, float]:
    """16 cats, 16 dogs and 8 red-framed "odd cats" wrongly tagged as dogs. Train, check the
    model learnt the wrong tags, correct them, finetune 10 epochs (corrections weighted x4).
    Returns the finetuned model's labels for the odd pictures and held-out accuracy before
    and after."""
    from catnet.curation.corrections import correct
    from catnet.training.loop import finetune, train

    data = tmp_path / "data"
    write_class(data / "cats", "cats", 16, 24)
    write_class(data / "dogs", "dogs", 16, 24)
    odd = [data / "dogs" / f"odd_{i}.png" for i in range(8)]
    for i, path in enumerate(odd):
        odd_cat(i).save(path)  # mislabelled: these are cats in this world
    held = tmp_path / "held_out"  # ordinary cats and dogs the model never saw
    write_class(held / "cats", "cats", 10, 24, start=1000)
    write_class(held / "dogs", "dogs", 10, 24, start=1000)

    cfg = tiny_config(data, tmp_path / "run", tmp_path / "cache", epochs=8, seed=seed)
    first = train(cfg)
    before = cat_votes(first.best_checkpoint, odd)
    assert [label for label, _ in before] == ["not_cat"] * 8, before  # learnt the wrong tags
    acc_before = held_out_accuracy(first.best_checkpoint, held)

    done = correct(data, odd, "cat")
    assert [c.old_label for c in done] == ["not_cat"] * 8
    moved = [c.dest for c in done]
    assert all(p.parent == data / "cats" and p.is_file() for p in moved)

    second = finetune(first.best_checkpoint, data, epochs=10, out=str(tmp_path / "finetuned"))
    assert (second.run_dir / "curves.png").is_file()
    after = cat_votes(second.best_checkpoint, moved)
    acc_after = held_out_accuracy(second.best_checkpoint, held)
    print(f"seed {seed}: odd pictures before {before}, after finetune {after}")
    print(f"held-out accuracy: before {acc_before:.1%}, after {acc_after:.1%}")
    return [label for label, _ in after], acc_before, acc_after


def test_finetune_learns_from_corrected_mistakes(tmp_path: Path) -> None:
    votes, acc_before, acc_after = learn_from_mistakes(tmp_path, seed=0)
    assert votes.count("cat") >= 7, votes  # 8 of 8 with seed 0
    assert acc_after >= acc_before - 0.10


def test_finetune_keeps_the_lesson_with_another_seed(tmp_path: Path) -> None:
    votes, _, _ = learn_from_mistakes(tmp_path, seed=5)
    assert votes.count("cat") >= 7, votes


# --- tune and the verdict ---------------------------------------------------------------------


def test_tune_cli_writes_table_plot_and_best_config(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    from catnet.config import TrainConfig, load_config

    data = make_dataset(tmp_path / "data", n_per_class=8)
    base = tmp_path / "base.toml"
    base.write_text(
        'precision = "fp32"\ndevice = "cpu"\nimage_size = 24\nepochs = 2\nworkers = 1\n'
        "batch_size = 16\n"
    )
    out = tmp_path / "tune"
    proc = catnet_cli(
        "tune", data, "--model", "mlp", "--time-budget", "20", "--out", out, "--config", base
    )
    assert proc.returncode == 0, proc.stderr
    with (out / "tune.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == TUNE_COLUMNS
    assert rows and {r["verdict"] for r in rows} <= VERDICTS
    # successive halving over the 6 MLP sizes: 6 trials, then the better 3, then 1
    assert [sum(r["round"] == str(n) for r in rows) for n in (1, 2, 3)] == [6, 3, 1]
    assert len({r["trial"] for r in rows}) == 6
    for r in rows:
        assert int(r["parameters"]) > 0
        assert float(r["gap"]) == pytest.approx(
            float(r["train_acc"]) - float(r["val_acc"]), abs=2e-4
        )
    assert (out / "tune.png").stat().st_size > 0
    best = load_config(TrainConfig, out / "best.toml")
    assert best.model == "mlp" and best.precision == "fp32"
    assert best.hidden in ([16], [64], [256], [512, 128], [2048, 512], [4096, 1024, 256])
    for trial in {r["trial"] for r in rows}:
        assert any((out / d / "curves.png").is_file() for d in os.listdir(out) if trial in d)
    text = flat(proc.stdout)
    for column in ("size", "parameters", "train acc", "val acc", "gap", "verdict", "time"):
        assert column in text, column
    assert "best.toml" in text


@dataclass
class FakeResult:
    metrics: dict[str, float]
    seconds: float
    skipped: tuple = ()  # unreadable files: none here


def test_tune_keeps_to_its_time_budget(
    make_dataset: MakeDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import catnet.training.tune
    from catnet.config import TrainConfig

    budgets: list[float] = []

    def fake_train(cfg: TrainConfig, callbacks: object = None) -> FakeResult:
        budgets.append(cfg.time_budget)
        size = sum(cfg.hidden)
        metrics = {"parameters": size, "train_accuracy": 0.9, "accuracy": 0.85 + size / 1e5,
                   "majority_accuracy": 0.5}  # fmt: skip
        return FakeResult(metrics, cfg.time_budget)

    monkeypatch.setattr(catnet.training.tune, "train", fake_train)
    base = TrainConfig(data=str(make_dataset(tmp_path / "data", n_per_class=2)), model="mlp")
    summary = catnet.training.tune.tune(base, 20.0, tmp_path / "tune")
    assert len(budgets) == len(summary["rows"]) == 10
    assert sum(budgets) <= 20.0 + 1e-6, budgets


@pytest.mark.parametrize(
    ("train_acc", "val_acc", "best_val", "majority", "expected"),
    [
        (1.00, 0.85, 0.90, 0.5, "overfit"),  # far better on the pictures it learnt from
        (0.99, 0.90, 0.90, 0.5, "overfit"),
        (0.95, 0.92, 0.92, 0.5, "good"),
        (0.979, 0.90, 0.90, 0.5, "good"),  # a gap just under 8 points is tolerated
        (0.60, 0.58, 0.90, 0.5, "underfit"),  # cannot even fit its training pictures
        (0.75, 0.75, 0.75, 0.5, "underfit"),
        (0.90, 0.90, 0.90, 0.9, "underfit"),  # no better than always answering "not cat"
        (0.93, 0.92, 0.92, 0.9, "underfit"),
        (0.98, 0.97, 0.97, 0.9, "good"),
    ],
)
def test_tune_verdict(
    train_acc: float, val_acc: float, best_val: float, majority: float, expected: str
) -> None:
    from catnet.training.tune import verdict

    assert verdict(train_acc, val_acc, best_val, majority) == expected


@given(train_acc=st.floats(0, 1), gap=st.floats(0.0801, 1), majority=st.floats(0.5, 1))
def test_tune_verdict_a_big_gap_is_always_overfit(
    train_acc: float, gap: float, majority: float
) -> None:
    from catnet.training.tune import verdict

    val_acc = train_acc - gap
    assert verdict(train_acc, val_acc, max(val_acc, 0.0), majority) == "overfit"


def test_train_cli_prints_a_verdict_and_next_step(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8)
    run = tmp_path / "run"
    proc = catnet_cli(
        "train", data, "--out", run, "--model", "cnn", "--width", "8", "--depth", "2",
        "--image-size", "24", "--epochs", "2", "--batch-size", "16", "--precision", "fp32",
        "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (run / "curves.png").stat().st_size > 0
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert any("fit" in line and ("train" in line or "accuracy" in line) for line in lines), (
        proc.stderr
    )
    assert any(line.startswith("next:") for line in lines), proc.stderr


def test_every_run_writes_curves(mlp_run: MlpRun, trained: TrainedRun) -> None:
    for run_dir in (mlp_run.run_dir, trained.run_dir):
        assert (run_dir / "curves.png").stat().st_size > 0


def test_finetune_cli_starts_from_the_checkpoint(trained: TrainedRun, tmp_path: Path) -> None:
    data = shutil.copytree(trained.data, tmp_path / "data")
    (data / "cats" / "broken.jpg").unlink()
    out = tmp_path / "ft"
    proc = catnet_cli("finetune", trained.best, data, "--epochs", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()
    assert "next:" in proc.stderr
    from catnet.models.checkpoint import load_checkpoint

    payload = load_checkpoint(out / "best.pt")
    original = load_checkpoint(trained.best)
    assert payload["arch"] == original["arch"]
    assert payload["train_config"]["init_from"] == str(trained.best)
    assert payload["train_config"]["lr"] == pytest.approx(original["train_config"]["lr"] / 3)
    assert dataclasses.asdict(trained.config)["precision"] == payload["train_config"]["precision"]
    # Fine-tuning the fine-tuned model (every Teach of catnet label does) keeps that LR.
    again = catnet_cli(
        "finetune", out / "best.pt", data, "--epochs", "1", "--out", tmp_path / "ft2"
    )
    assert again.returncode == 0, again.stderr
    twice = load_checkpoint(tmp_path / "ft2" / "best.pt")["train_config"]
    assert twice["lr"] == pytest.approx(original["train_config"]["lr"] / 3)
