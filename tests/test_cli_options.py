"""Options come from the config dataclasses (catnet/cli/options.py): every setting is a flag with
its help line, a new field becomes a flag without touching the CLI, and flags still override the
config file. Also the training console: what the epoch lines mark and say."""

from __future__ import annotations

import dataclasses
import io
import types
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from rich.markup import escape
from typer.testing import CliRunner

from catnet.cli import app
from catnet.cli.commands import TRAIN_INTERNAL
from catnet.cli.options import config_options, flag, overrides
from catnet.config import (
    EvaluateConfig,
    ExplainConfig,
    LabelConfig,
    PredictConfig,
    TrainConfig,
    setting,
)

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # help text unwrapped, no "…" cut names


def command_options(command: str) -> dict[str, Any]:
    """Every option of a catnet command by its first flag: '--lr' -> the (click) option."""
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.opts[0]: p for p in cmd.params if p.opts[0].startswith("--")}


def test_every_train_config_field_is_a_train_flag_with_its_help() -> None:
    options = command_options("train")
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_INTERNAL or f.name == "data":  # data is the DATA argument
            assert flag(f.name) not in options
            continue
        option = options.get(flag(f.name))
        assert option is not None, f"TrainConfig.{f.name} has no --flag"
        assert f.metadata["help"], f"TrainConfig.{f.name} has no help line"
        assert escape(f.metadata["help"]) in option.help, f.name  # escaped for Rich markup
    assert TRAIN_INTERNAL.keys() <= {f.name for f in dataclasses.fields(TrainConfig)}


# The settings of each other command that are no flags (none yet): name -> why.
INTERNAL: dict[str, dict[str, str]] = {"evaluate": {}, "predict": {}, "explain": {}, "label": {}}


@pytest.mark.parametrize(
    ("command", "cls"),
    [
        ("evaluate", EvaluateConfig),
        ("predict", PredictConfig),
        ("explain", ExplainConfig),
        ("label", LabelConfig),
    ],
)
def test_every_setting_of_the_other_commands_is_a_flag_with_its_help(
    command: str, cls: type
) -> None:
    options = command_options(command)
    for f in dataclasses.fields(cls):
        if f.name in INTERNAL[command]:
            assert flag(f.name) not in options, f"{cls.__name__}.{f.name} is internal"
            continue
        option = options.get(flag(f.name))
        assert option is not None, f"{cls.__name__}.{f.name} has no --flag"
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help line"
        assert escape(f.metadata["help"]) in option.help, f"{cls.__name__}.{f.name}"


def test_train_help_lists_every_option_with_its_help() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("--config", "--augment", "--no-augment", "--cache", "--no-cache"):
        assert name in text
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_INTERNAL or f.name == "data":
            continue
        assert flag(f.name) in text, f.name
        assert f.metadata["help"] in text, f.name  # "[default: ...]" survives Rich markup


def test_a_field_added_to_a_config_becomes_a_flag() -> None:
    """The mechanism with a copy of TrainConfig plus new fields: nothing else to edit."""
    grown = dataclasses.make_dataclass(
        "GrownConfig",
        [
            ("new_knob", float, setting(1.5, "A knob nobody had before.")),
            ("new_switch", bool, setting(True, "A switch nobody had before.")),
            ("new_sizes", list[int], setting([3, 4], "Sizes nobody had before.")),
        ],
        bases=(TrainConfig,),
    )
    seen: dict[str, Any] = {}
    tiny = typer.Typer()

    @tiny.command()
    @config_options(grown, exclude=TRAIN_INTERNAL)
    def run(data: str = typer.Argument(""), **settings: Any) -> None:
        seen.update(overrides(grown, settings))

    @tiny.command()
    def other() -> None: ...  # two commands, so `run` is a subcommand as in catnet

    help_text = " ".join(CliRunner().invoke(tiny, ["run", "--help"], env=WIDE).output.split())
    assert "--new-knob" in help_text and "A knob nobody had before. [default: 1.5]" in help_text
    assert "--no-new-switch" in help_text and "--new-sizes" in help_text
    result = CliRunner().invoke(
        tiny,
        ["run", "d", "--new-knob", "2.5", "--no-new-switch", "--new-sizes", "5,6", "--lr", "0.1"],
    )
    assert result.exit_code == 0, result.output
    assert seen["new_knob"] == 2.5 and seen["new_switch"] is False and seen["new_sizes"] == [5, 6]
    assert seen["lr"] == 0.1 and seen["epochs"] is None  # not given: the file/default decides


@pytest.fixture
def captured_train(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """`catnet train` up to the config it would train with (run_training replaced)."""
    import catnet.cli.render

    configs: list[TrainConfig] = []

    def run_training(cfg: TrainConfig, console: Any) -> Any:
        configs.append(cfg)
        return types.SimpleNamespace(skipped=0)  # a TrainResult as far as the command reads it

    monkeypatch.setattr(catnet.cli.render, "run_training", run_training)
    return configs


def test_train_flags_override_the_config_file(tmp_path: Path, captured_train: list) -> None:
    config = tmp_path / "c.toml"
    config.write_text('epochs = 7\nlr = 0.01\nhidden = [64]\nmodel = "mlp"\naugment = true\n')
    args = ["train", str(tmp_path), "-c", str(config), "--lr", "0.02", "--hidden", "32,16",
            "--no-augment", "--out", str(tmp_path / "run"), "--select-best", "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (cfg,) = captured_train
    assert (cfg.lr, cfg.hidden, cfg.augment, cfg.select_best, cfg.workers) == (
        0.02, [32, 16], False, True, 1
    )  # fmt: skip
    assert (cfg.epochs, cfg.model, cfg.data) == (7, "mlp", str(tmp_path))  # from the file
    assert cfg.out == str(tmp_path / "run") and cfg.cache is True  # default kept


def test_bad_comma_list_is_one_clean_usage_error(tmp_path: Path, captured_train: list) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--hidden", "64,abc"])
    assert result.exit_code == 2 and not captured_train
    assert "--hidden takes comma-separated ints like 512,128" in " ".join(result.output.split())


def test_label_flags_override_its_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`catnet label` up to the session it would open: flags over the file over the defaults,
    and its own --checkpoint, --unlabeled, --out and -c as the README gives them."""
    import catnet.labelling.session
    from catnet.errors import CatnetError

    seen: list[tuple[LabelConfig, Path | None]] = []

    def opened(data: Path, cfg: LabelConfig, model: Path | None) -> None:
        seen.append((cfg, model))
        raise CatnetError("stop before serving")

    monkeypatch.setattr(catnet.labelling.session, "open_session", opened)
    config = tmp_path / "label.toml"
    config.write_text('port = 9000\nepochs = 7\nmodel = "mlp"\n')
    args = ["label", str(tmp_path), "-c", str(config), "--epochs", "3", "--checkpoint", "m.pt",
            "--unlabeled", "u", "--out", "o", "--max-upload-mb", "2.5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert "stop before serving" in result.output
    ((cfg, model),) = seen
    assert (cfg.epochs, cfg.unlabeled, cfg.out, cfg.max_upload_mb) == (3, "u", "o", 2.5)
    assert (cfg.port, cfg.model) == (9000, "mlp")  # from the file
    assert (cfg.host, cfg.first_epochs) == ("127.0.0.1", 30) and model == Path("m.pt")


def test_explain_flags_reach_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """`catnet explain` up to the job it would run, with the config its flags made."""
    import catnet.explaining.explain_files
    import catnet.predicting.prediction
    from catnet.errors import CatnetError

    seen: list[tuple[Any, list[str], Path, ExplainConfig]] = []

    def explain_files(model: Any, paths: list[str], out: Path, cfg: ExplainConfig, _: Any) -> None:
        seen.append((model, paths, out, cfg))
        raise CatnetError("stop before explaining")

    monkeypatch.setattr(
        catnet.predicting.prediction, "load_model", lambda path, **_: f"model {path}"
    )
    monkeypatch.setattr(catnet.explaining.explain_files, "explain_files", explain_files)
    args = ["explain", "m.pt", "a.jpg", "b/", "--out", "maps", "--target", "cat",
            "--sheet-max", "0", "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert "stop before explaining" in result.output
    ((model, paths, out, cfg),) = seen
    assert (model, paths, out) == ("model m.pt", ["a.jpg", "b/"], Path("maps"))
    assert (cfg.target, cfg.sheet_max, cfg.workers, cfg.batch_size) == ("cat", 0, 1, 32)


# --- the training console ------------------------------------------------------------------------


def epoch_lines(rows: list[dict[str, Any]]) -> list[str]:
    from catnet.cli.render import RichTrainCallbacks

    out = io.StringIO()
    callbacks = RichTrainCallbacks(Console(file=out, width=200))
    for row in rows:
        callbacks.on_epoch_start(row["epoch"], row["planned_epochs"], 3)
        callbacks.on_epoch_end(row)
    return out.getvalue().splitlines()


def row(epoch: int, improved: bool, planned: int, budget: float = 0.0) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.7,
            "lr": 1e-3, "seconds": 3.0, "best": True, "improved": improved, "monitor": "val_loss",
            "planned_epochs": planned, "time_budget": budget}  # fmt: skip


def test_only_improving_epochs_are_marked_and_the_mark_is_explained() -> None:
    # best=True on every row (best.pt follows the last epoch): the mark must not follow it.
    lines = epoch_lines([row(1, True, 3), row(2, False, 3), row(3, True, 3)])
    assert lines[0] == "* = val_loss better than at every earlier epoch"
    assert [line.endswith(" *") for line in lines[1:]] == [True, False, True]
    assert lines[2].startswith("epoch   2/3 ")
    assert not any("re-plans" in line for line in lines)  # no budget, a fixed plan


def test_a_time_budget_says_once_that_it_replans_and_shows_no_changing_total() -> None:
    lines = epoch_lines([row(1, True, 39, 60.0), row(2, True, 40, 60.0), row(3, False, 38, 60.0)])
    assert sum("the time budget re-plans the number of epochs" in line for line in lines) == 1
    epochs = [line for line in lines if line.startswith("epoch")]
    assert [line.split()[1] for line in epochs] == ["1", "2", "3"]  # no "/39", "/40", "/38"
