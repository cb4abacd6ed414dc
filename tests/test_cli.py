"""The command line, in-process (conftest.catnet_cli, or typer's CliRunner directly): the same
exit codes and output as a real process without importing torch again. The real entry points
(`python -m catnet` and the `catnet` script) each have a test of their own."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TrainedRun, catnet_cli, catnet_process, draw_picture, write_class
from PIL import Image
from typer.testing import CliRunner

from catnet.cli import app
from catnet.training.runs import read_metrics

MakeDataset = Callable[..., Path]
PREDICT_COLUMNS = ["path", "label", "p_cat", "error"]


def flat(text: str) -> str:
    """Rich wraps at 80 columns when not writing to a terminal; compare text, not layout."""
    return " ".join(text.split())


def first_json(text: str, **kwargs: object) -> object:
    """The JSON value that starts at the first '{' (older Click mixes stderr into stdout)."""
    start = text.index("{")
    return json.JSONDecoder(**kwargs).raw_decode(text[start:])[0]  # type: ignore[arg-type]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_clean_usage_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
    for word in words:
        assert word in flat(proc.stderr), proc.stderr


@pytest.fixture
def to_predict(tmp_path: Path) -> dict[str, Path]:
    """A single file, a folder (with a subfolder and a non-picture), a glob's folder, a broken
    file and a path that does not exist."""
    root = tmp_path / "inputs"
    write_class(root / "folder", "cats", 2, 24)
    write_class(root / "folder" / "sub", "dogs", 1, 24)
    (root / "folder" / "README.txt").write_text("not a picture, and not .jpg: not listed")
    write_class(root / "globbed", "dogs", 2, 24, fmt="jpg")
    single = root / "single.webp"
    draw_picture("cats", 99).save(single, lossless=True)
    broken = root / "broken.jpg"
    broken.write_text("not a picture")
    return {
        "single": single,
        "folder": root / "folder",
        "glob": root / "globbed",
        "broken": broken,
        "missing": root / "missing.png",
    }


# --- help and startup ---------------------------------------------------------------------------

NO_TORCH_CHECK = """
import sys
sys.argv = ["catnet", *sys.argv[1:]]
from catnet.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print("RESULT", "torch" in sys.modules, code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["predict", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHECK, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "RESULT False 0", proc.stdout + proc.stderr


@pytest.mark.slow
def test_help_through_the_module_entry_point() -> None:
    proc = catnet_process("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "evaluate", "predict", "explain", "demo", "cache"):
        assert command in proc.stdout


@pytest.mark.slow
def test_the_catnet_script_answers_a_mistake_with_one_line(tmp_path: Path) -> None:
    """The `catnet` script pip installs: a user's mistake leaves through main()'s exit path
    (torch imported by then) with exit 2 and one `error:` line."""
    script = shutil.which("catnet", path=Path(sys.executable).parent)
    if script is None:
        pytest.skip("no `catnet` script beside this Python (catnet is not pip-installed here)")
    write_class(tmp_path / "pics", "cats", 1, 24)
    proc = subprocess.run(
        [script, "predict", tmp_path / "nope.pt", tmp_path / "pics"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert_clean_usage_error(proc, "checkpoint not found")


# --- the main flows, as a user runs them ------------------------------------------------------


@pytest.mark.slow
def test_train_from_the_command_line(tmp_path: Path, make_dataset: MakeDataset) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8, size=24)
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[model]\nmodel = "cnn"\nwidth = 8\ndepth = 2\n'
        '[optim]\nepochs = 5\nbatch_size = 16\nimage_size = 24\nprecision = "fp32"\n'
    )
    run = tmp_path / "run"
    proc = catnet_cli("train", data, "--config", config, "--epochs", "1", "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    text = flat(proc.stderr)
    assert "Training finished" in text
    assert "best epoch" in text and "val accuracy" in text
    for name in ("best.pt", "last.pt", "metrics.csv", "config.toml", "curves.png"):
        assert (run / name).is_file(), name
    assert len(read_metrics(run / "metrics.csv")) == 1  # --epochs 1 beat the file's 5
    saved = (run / "config.toml").read_text()
    assert "epochs = 1\n" in saved and "width = 8\n" in saved
    assert not Path("runs").exists()  # --out was honoured


def test_evaluate_json(trained: TrainedRun) -> None:
    proc = catnet_cli("evaluate", trained.best, trained.data, "--json")
    assert proc.returncode == 1, proc.stderr  # done, but cats/broken.jpg could not be read
    result = json.loads(proc.stdout)
    keys = {"n", "accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "confusion"}
    assert keys | {"skipped"} <= set(result)
    assert set(result["confusion"]) == {"tp", "fp", "tn", "fn"}
    assert result["n"] == 24 == sum(result["confusion"].values())  # every readable picture
    assert result["skipped"] == 1  # cats/broken.jpg
    assert result["threshold"] == 0.5
    c = result["confusion"]
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"])
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert result["accuracy"] == pytest.approx((c["tp"] + c["tn"]) / 24)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["f1"] == pytest.approx(f1)
    assert c["tp"] + c["fn"] == 12  # the cats/ folder, less its unreadable file
    assert "skipped 1" in proc.stderr


def test_predict_files_folders_globs_to_csv(
    trained: TrainedRun, to_predict: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "predictions.csv"
    proc = catnet_cli(
        "predict",
        trained.best,
        to_predict["single"],
        to_predict["folder"],
        str(to_predict["glob"] / "*.jpg"),
        to_predict["broken"],
        to_predict["missing"],
        "--output",
        out,
    )
    assert proc.returncode == 1, proc.stderr  # some inputs could not be read
    assert "Traceback" not in proc.stderr
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames is not None
        assert reader.fieldnames[:4] == PREDICT_COLUMNS
        rows = {Path(r["path"]).name: r for r in reader}
    good = {"single.webp", "cats_0.png", "cats_1.png", "dogs_0.png", "dogs_0.jpg", "dogs_1.jpg"}
    assert set(rows) == good | {"broken.jpg", "missing.png"}
    for name in good:
        assert rows[name]["label"] in ("cat", "not_cat"), rows[name]
        assert 0.0 <= float(rows[name]["p_cat"]) <= 1.0
        assert rows[name]["error"] == ""
    for name in ("broken.jpg", "missing.png"):
        assert rows[name]["label"] == "error"
        assert rows[name]["p_cat"] == ""
        assert rows[name]["error"]
    assert "not a picture" in rows["broken.jpg"]["error"]
    assert "not found" in rows["missing.png"]["error"]
    assert "8 pictures" in flat(proc.stderr) and "2 error" in flat(proc.stderr)


def test_predict_jsonl_with_threshold_zero(
    trained: TrainedRun, to_predict: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    proc = catnet_cli(
        "predict", trained.best, to_predict["folder"], to_predict["single"],
        "--threshold", "0", "--output", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert set(PREDICT_COLUMNS) <= set(row)
        assert row["label"] == "cat"
        assert row["error"] == ""
        assert isinstance(row["p_cat"], float)


# --- user mistakes: exit 2, one `error:` line, no traceback ---------------------------------------


def test_missing_data_folder(tmp_path: Path) -> None:
    proc = catnet_cli("train", tmp_path / "nope", "--out", tmp_path / "run")
    assert_clean_usage_error(proc, "not found")


def test_one_class_folder(tmp_path: Path) -> None:
    write_class(tmp_path / "only" / "cats", "cats", 3, 16)
    proc = catnet_cli("train", tmp_path / "only", "--out", tmp_path / "run")
    assert_clean_usage_error(proc, "only cat pictures", "hint:")


def test_missing_checkpoint(tmp_path: Path, to_predict: dict[str, Path]) -> None:
    proc = catnet_cli("predict", tmp_path / "nope.pt", to_predict["single"])
    assert_clean_usage_error(proc, "checkpoint not found")


def test_unknown_config_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("epochz = 3\n")
    proc = catnet_cli("train", tmp_path, "--config", tmp_path / "bad.toml")
    assert_clean_usage_error(proc, "epochz")


def test_bad_model_value(tmp_path: Path) -> None:
    proc = catnet_cli("train", tmp_path, "--model", "transformer")
    assert_clean_usage_error(proc, "model must be one of", "transformer")


def test_error_with_a_long_path_stays_on_one_line(tmp_path: Path) -> None:
    missing = tmp_path / ("a_long_folder_name_" * 5) / "data"
    proc = catnet_cli("train", missing)
    assert proc.returncode == 2
    assert f"error: data folder not found: {missing}" in proc.stderr.splitlines()


def test_text_file_as_checkpoint(tmp_path: Path, to_predict: dict[str, Path]) -> None:
    (tmp_path / "notes.pt").write_text("hello world this is not a checkpoint\n")
    proc = catnet_cli("predict", tmp_path / "notes.pt", to_predict["single"])
    assert_clean_usage_error(proc, "notes.pt")


# --- in-process (CliRunner) -------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_evaluate_table(runner: CliRunner, trained: TrainedRun) -> None:
    result = runner.invoke(app, ["evaluate", str(trained.best), str(trained.data)])
    assert result.exit_code == 1, result.output  # cats/broken.jpg
    text = flat(result.output)
    for word in ("accuracy", "precision", "recall", "roc_auc", "Confusion matrix", "24 pictures"):
        assert word in text


def test_evaluate_threshold_option(runner: CliRunner, trained: TrainedRun) -> None:
    args = ["evaluate", str(trained.best), str(trained.data), "--json", "--threshold", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # cats/broken.jpg
    metrics = first_json(result.stdout)
    assert metrics["threshold"] == 0.0
    assert metrics["recall"] == 1.0 and metrics["confusion"]["tn"] == 0


def test_evaluate_json_on_one_class_is_valid_json(
    runner: CliRunner, trained: TrainedRun, tmp_path: Path
) -> None:
    write_class(tmp_path / "only" / "cats", "cats", 3, 24)
    result = runner.invoke(app, ["evaluate", str(trained.best), str(tmp_path / "only"), "--json"])
    assert result.exit_code == 0, result.output

    def reject(token: str) -> float:
        raise ValueError(f"{token} is not JSON")

    first_json(result.stdout, parse_constant=reject)


def test_predict_table_on_stdout(
    runner: CliRunner, trained: TrainedRun, to_predict: dict[str, Path]
) -> None:
    result = runner.invoke(app, ["predict", str(trained.best), str(to_predict["folder"])])
    assert result.exit_code == 0, result.output
    assert "p_cat" in result.stdout
    labels = re.findall(r"^\s*([0-9.]+)\s+(cat|not_cat)\b", result.stdout, re.MULTILINE)
    assert len(labels) == 3  # cats_0.png, cats_1.png, sub/dogs_0.png; not README.txt
    assert all(0.0 <= float(p) <= 1.0 for p, _ in labels)


def test_predict_json_lines_on_stdout(
    runner: CliRunner, trained: TrainedRun, to_predict: dict[str, Path]
) -> None:
    args = ["predict", str(trained.best), str(to_predict["broken"]), str(to_predict["single"])]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["label"] == "error" for r in rows] == [True, False]


def test_predict_table_keeps_one_row_per_picture(
    runner: CliRunner, trained: TrainedRun, tmp_path: Path
) -> None:
    folder = tmp_path / ("a_long_folder_name_for_pictures_" * 3)
    write_class(folder, "cats", 1, 24)
    result = runner.invoke(app, ["predict", str(trained.best), str(folder)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "cats_0.png" in line]
    assert len(rows) == 1 and str(folder / "cats_0.png") in rows[0]


def test_predict_with_nothing_to_predict(
    runner: CliRunner, trained: TrainedRun, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["predict", str(trained.best), str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no pictures found" in flat(result.output)


def test_predict_output_must_be_csv_or_jsonl(
    runner: CliRunner, trained: TrainedRun, to_predict: dict[str, Path], tmp_path: Path
) -> None:
    args = ["predict", str(trained.best), str(to_predict["single"]), "-o", str(tmp_path / "x.txt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert ".jsonl" in flat(result.output)


def test_hidden_flag_must_be_integers(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path), "--model", "mlp", "--hidden", "64,abc"])
    assert result.exit_code == 2
    assert "--hidden" in flat(result.output)


def test_resume_from_the_command_line(
    runner: CliRunner, trained: TrainedRun, tmp_path: Path
) -> None:
    run = trained.copy_run(tmp_path / "run")
    result = runner.invoke(app, ["train", "--resume", str(run / "last.pt"), "--epochs", "3"])
    assert result.exit_code == 1, result.output  # done; trained.data's cats/broken.jpg skipped
    assert "resuming from epoch 2" in flat(result.output)
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]


def test_predict_png_named_jpg(runner: CliRunner, trained: TrainedRun, tmp_path: Path) -> None:
    """A PNG named .jpg is a picture like any other."""
    path = tmp_path / "disguised.jpg"
    Image.open(next((trained.data / "dogs").iterdir())).save(path, "PNG")
    result = runner.invoke(app, ["predict", str(trained.best), str(path), "--json"])
    assert result.exit_code == 0, result.output
    row = first_json(result.stdout)
    assert isinstance(row, dict) and row["label"] in ("cat", "not_cat")
