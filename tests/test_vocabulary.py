"""One vocabulary for users: every row names its picture `path` and its `label` is the model's
answer (`truth` the folder's tag); files written with the older names still read back."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TrainedRun, make_dataset, write_class
from typer.main import get_command
from typer.testing import CliRunner

from catnet.cli import app
from catnet.config import INFERENCE_BATCH_SIZE, EvaluateConfig, ExplainConfig, PredictConfig
from catnet.curation.corrections import correct_from_file
from catnet.errors import EXIT_SOME_FAILED, EXIT_USAGE, CatnetError


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


# --- flags ------------------------------------------------------------------------------------


def commands() -> dict[str, Any]:
    """Every click command by its name as typed (`cache info` for a group's)."""
    found = {}
    for name, command in get_command(app).commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None) or {"": command}
        for sub, cmd in subs.items():
            found[f"{name} {sub}".strip()] = cmd
    return found


def options(command: Any) -> dict[str, Any]:
    return {o: p for p in command.params for o in (*p.opts, *p.secondary_opts)}


def test_a_folder_is_out_and_a_file_is_output() -> None:
    where = {"train": "--out", "finetune": "--out", "tune": "--out", "demo": "--out",
             "explain": "--out", "label": "--out", "predict": "--output", "evaluate": "--output",
             "export": "--output"}  # fmt: skip
    for name, command in commands().items():
        flags = options(command)
        assert "--save-to" not in flags, name
        if name in where:
            assert where[name] in flags, name
        if "--output" in flags:
            assert flags["-o"] is flags["--output"], name  # -o is always --output
        if "--out" in flags and "--output" in flags:
            raise AssertionError(f"{name} has both --out and --output")


def test_model_is_always_a_network_and_a_checkpoint_never_a_flag_named_model() -> None:
    for name, command in commands().items():
        flags = options(command)
        assert "--first-model" not in flags, name
        if "--model" in flags:  # train, tune, label (its first model): the network's kind
            assert "cnn" in flags["--model"].help, name
    assert "--checkpoint" in options(commands()["label"])


def test_what_a_user_says_a_picture_is_truth_and_label_is_the_models() -> None:
    flags = options(commands()["correct"])
    assert "--truth" in flags and "--label" not in flags


def test_on_off_switches_are_flag_pairs() -> None:
    for name in ("predict", "evaluate"):
        flags = options(commands()[name])
        assert flags["--open-set"] is flags["--no-open-set"], name
    for name, command in commands().items():
        for param in command.params:
            assert "on or off" not in (getattr(param, "help", "") or ""), (name, param.name)


def test_inference_jobs_share_one_batch_size() -> None:
    assert EvaluateConfig().batch_size == PredictConfig().batch_size == INFERENCE_BATCH_SIZE
    assert ExplainConfig().batch_size == INFERENCE_BATCH_SIZE // 2  # forward + backward


def test_every_job_with_a_config_dataclass_takes_config() -> None:
    for name in ("train", "evaluate", "predict", "explain", "label", "tune"):
        flags = options(commands()[name])
        assert flags["--config"] is flags["-c"], name


def test_predict_and_evaluate_read_their_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags over the file over the defaults, as for train."""
    import catnet.cli.predict_view
    import catnet.evaluating.evaluation

    seen: list[Any] = []

    def stop(*args: Any, **kwargs: Any) -> None:
        seen.append(next(a for a in args if isinstance(a, EvaluateConfig | PredictConfig)))
        raise CatnetError("stop here")

    monkeypatch.setattr(catnet.cli.predict_view, "run_prediction", stop)
    monkeypatch.setattr(catnet.evaluating.evaluation, "evaluate", stop)
    config = tmp_path / "c.toml"
    config.write_text("threshold = 0.7\nworkers = 3\nopen_set = true\n")
    for command in ("predict", "evaluate"):
        args = [command, "m.pt", str(tmp_path), "-c", str(config), "--workers", "1"]
        result = CliRunner().invoke(app, [*args, "--no-open-set"])
        assert "stop here" in result.output, result.output
    assert [(c.threshold, c.workers, c.open_set) for c in seen] == [(0.7, 1, False)] * 2


def test_every_flag_in_the_readme_command_lines_exists() -> None:
    known = commands()
    repo = Path(__file__).resolve().parents[1]  # the README's command lines moved to docs/ too
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    text = "\n".join(path.read_text(encoding="utf-8") for path in docs)
    checked = 0
    for line in text.splitlines():
        for match in re.finditer(r"\bcatnet ((?:cache )?[a-z]+)\b([^#`|]*)", line):
            if match.group(1) not in known:
                continue
            flags = options(known[match.group(1)])
            for flag in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", match.group(2)):
                assert flag in flags or flag == "--help", (match.group(1), flag, line)
                checked += 1
    assert checked > 50


# --- exit codes: 0 done, 1 done but some inputs unreadable, 2 the user's mistake ---------------


@pytest.mark.parametrize("command", sorted(commands()))
def test_a_bad_flag_exits_2(command: str) -> None:
    result = CliRunner().invoke(app, [*command.split(), "--no-such-flag"])
    assert result.exit_code == EXIT_USAGE, result.output


MISSING = {  # each command with a path that does not exist
    "train": ["missing"], "evaluate": ["missing.pt", "."], "predict": ["missing.pt", "."],
    "explain": ["missing.pt", "."], "finetune": ["missing.pt", "."], "tune": ["missing"],
    "export": ["missing.pt", "-o", "m.onnx"], "info": ["missing.pt"], "check": ["missing"],
    "correct": ["missing", "--truth", "cat", "a.png"], "label": ["missing"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(MISSING))
def test_a_missing_path_exits_2(command: str) -> None:
    result = CliRunner().invoke(app, [command, *MISSING[command]])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "error:" in result.output and "missing" in result.output, result.output


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "check"])
def test_unreadable_inputs_exit_1(command: str, trained: TrainedRun) -> None:
    """trained.data holds cats/broken.jpg: the job is done for the others, and says so."""
    given = [str(trained.data)] if command == "check" else [str(trained.best), str(trained.data)]
    result = CliRunner().invoke(app, [command, *given])
    assert result.exit_code == EXIT_SOME_FAILED, result.output


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "finetune", "tune"])
def test_training_on_unreadable_inputs_exits_1(
    command: str, trained: TrainedRun, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=6, size=24)
    (data / "cats" / "broken.jpg").write_text("not a picture")
    tiny = ["--model", "cnn", "--width", "8", "--depth", "2", "--image-size", "24",
            "--precision", "fp32", "--workers", "1"]  # fmt: skip
    args = {
        "train": ["train", str(data), *tiny, "--epochs", "1", "--out", "run"],
        "finetune": ["finetune", str(trained.best), str(data), "--epochs", "1", "--out", "run"],
        "tune": ["tune", str(data), "--model", "mlp", "--time-budget", "1", "--out", "tune"],
    }[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "unreadable" in result.output or "skipped" in result.output
