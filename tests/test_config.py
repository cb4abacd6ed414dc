"""Config files: defaults < TOML file < CLI flags; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from catnet.config import (
    EvaluateConfig,
    PredictConfig,
    TrainConfig,
    from_dict,
    load_config,
    read_toml,
    save_config,
    to_toml,
)
from catnet.errors import CatnetError

CONFIGS = REPO / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'model = "cnn"\nlearning_rate = 0.1\n')
    with pytest.raises(CatnetError) as info:
        load_config(TrainConfig, path)
    assert "learning_rate" in info.value.message
    assert "lr" in info.value.hint  # the valid keys are listed


def test_unknown_key_inside_a_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[model]\nwidht = 16\n")
    with pytest.raises(CatnetError, match="widht"):
        load_config(TrainConfig, path)


def test_sections_are_flattened(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml", '[model]\nmodel = "mlp"\nhidden = [64, 32]\n[optim]\nlr = 0.01\n'
    )
    cfg = load_config(TrainConfig, path)
    assert (cfg.model, cfg.hidden, cfg.lr) == ("mlp", [64, 32], 0.01)


@pytest.mark.parametrize(
    "line",
    [
        'epochs = "ten"',
        "lr = true",
        "augment = 1",
        'hidden = "512,128"',
        "batch_size = 3.5",
        "model = 3",
    ],
)
def test_type_errors(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "c.toml", line + "\n")
    with pytest.raises(CatnetError, match="should be"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize(
    "line", ['hidden = ["a", "b"]', "hidden = [1.5, 2.0]", "hidden = []", "hidden = [64, 0]"]
)
def test_hidden_must_be_a_list_of_ints(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "c.toml", 'model = "mlp"\n' + line + "\n")
    with pytest.raises(CatnetError, match="hidden"):
        load_config(TrainConfig, path)


def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    cfg = load_config(TrainConfig, write(tmp_path / "c.toml", "lr = 1\nmin_delta = 0\n"))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert isinstance(cfg.min_delta, float)


def test_cli_flags_override_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "epochs = 5\nlr = 0.01\nwidth = 16\n")
    cfg = load_config(TrainConfig, path, {"epochs": 7, "lr": None, "model": "cnn"})
    assert cfg.epochs == 7  # flag wins
    assert cfg.lr == 0.01  # None = flag not given: the file's value stays
    assert cfg.width == 16
    assert cfg.batch_size == TrainConfig().batch_size  # neither: the default


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.toml")
    bad = write(tmp_path / "bad.toml", "lr = = 3\n")
    with pytest.raises(CatnetError, match="not valid TOML"):
        load_config(TrainConfig, bad)


def test_validation_is_applied_after_loading(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="lr"):
        load_config(TrainConfig, write(tmp_path / "c.toml", "lr = 100.0\n"))


def test_configs_cnn_toml_is_valid_and_matches_the_defaults() -> None:
    path = CONFIGS / "cnn.toml"
    if not path.exists():
        pytest.skip("configs/cnn.toml does not exist yet")
    cfg = load_config(TrainConfig, path)
    cfg.validate()
    assert cfg.model == "cnn"
    # The module docstring promises cnn.toml repeats the TrainConfig defaults (the recipe).
    resolved = TrainConfig(model="cnn")  # the default model is pretrained
    resolved.validate()  # resolves the automatic settings (tta) for the cnn
    defaults = dataclasses.asdict(resolved)
    differing = {k: v for k, v in read_toml(path).items() if defaults[k] != v}
    assert not differing, f"configs/cnn.toml disagrees with TrainConfig defaults: {differing}"


def test_configs_mlp_toml_is_valid() -> None:
    path = CONFIGS / "mlp.toml"
    cfg = load_config(TrainConfig, path)
    cfg.validate()
    assert cfg.model == "mlp"
    assert cfg.hidden and all(h > 0 for h in cfg.hidden)


def test_every_shipped_config_loads() -> None:
    shipped = sorted(CONFIGS.glob("*.toml"))
    assert {"cnn.toml", "mlp.toml"} <= {p.name for p in shipped}, shipped  # else nothing is tested
    for path in shipped:
        load_config(TrainConfig, path).validate()


def test_to_toml_read_toml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(
        data='/data/my "cats" \\ dogs/ü猫',
        model="mlp",
        hidden=[64, 16, 8],
        lr=1e-5,
        augment=False,
        epochs=3,
        time_budget=12.5,
        weight_decay=0.0,
    )
    save_config(cfg, tmp_path / "config.toml")
    back = from_dict(TrainConfig, read_toml(tmp_path / "config.toml"))
    assert back == cfg


@pytest.mark.parametrize("cls", [EvaluateConfig, PredictConfig])
def test_other_configs_round_trip(tmp_path: Path, cls: Any) -> None:
    cfg = cls(threshold=0.25, tta=True)
    save_config(cfg, tmp_path / "c.toml")
    assert from_dict(cls, read_toml(tmp_path / "c.toml")) == cfg


_toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs"))),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _toml_scalars))
def test_to_toml_round_trips_printable_values(values: dict[str, Any]) -> None:
    assert tomllib.loads(to_toml(values)) == values


def test_to_toml_escapes_control_characters() -> None:
    value = "runs/odd\nname\x7f"
    assert tomllib.loads(to_toml({"data": value}))["data"] == value


@pytest.mark.parametrize(
    "changes",
    [
        {"lr": 0.0},
        {"lr": 100.0},
        {"lr": -1e-3},
        {"batch_size": 0},
        {"batch_size": 10**6},
        {"epochs": 0},
        {"model": "rnn"},
        {"activation": "swish"},
        {"lr_schedule": "linear"},
        {"monitor": "accuracy"},
        {"val_fraction": 0.95},
        {"dropout": 1.0},
        {"image_size": 4},
        {"eval_image_size": 2000},
        {"depth": 0},
        {"hidden": []},
        {"hidden": [64, 0]},
    ],
)
def test_validate_rejects_absurd_values(changes: dict[str, Any]) -> None:
    cfg = dataclasses.replace(TrainConfig(), **changes)
    with pytest.raises(CatnetError):
        cfg.validate()


def test_defaults_are_valid() -> None:
    TrainConfig().validate()
