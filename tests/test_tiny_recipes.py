"""The tiny-set recipes (configs/tiny-mlp.toml, configs/tiny-cnn.toml): course-sized folders of
~200 pictures of 64x64. They load with the five regularisers set, they train, and
scripts/benchmark_tiny.py measures them against today's defaults on the same splits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import make_dataset, run_benchmark

from catnet.config import TrainConfig, load_config, read_toml
from catnet.models.checkpoint import load_checkpoint
from catnet.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY = ("tiny-mlp", "tiny-cnn")


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_sets_the_five_regularisers(name: str) -> None:
    path = REPO / "configs" / f"{name}.toml"
    cfg = load_config(TrainConfig, path)
    assert cfg.model == name.removeprefix("tiny-")
    assert cfg.image_size > 0  # fixed, not "from the data": the recipe is for 64x64 folders
    # Each regulariser is chosen for ~200 pictures in the file, none left to the defaults
    # (early stopping may be chosen off: the file says why).
    regularisers = ("weight_decay", "patience", "lr_schedule", "augment", "dropout")
    assert set(regularisers) <= set(read_toml(path)), path
    assert cfg.weight_decay > 0 and cfg.dropout > 0 and cfg.augment
    assert cfg.lr_schedule in ("cosine", "onecycle", "step")  # the LR decays


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_trains_on_small_pictures(tmp_path: Path, name: str) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=16, size=64)
    overrides = {"data": str(data), "out": str(tmp_path / "run"), "epochs": 3, "workers": 1}
    overrides["cache_dir"] = str(tmp_path / "cache")
    cfg = load_config(TrainConfig, REPO / "configs" / f"{name}.toml", overrides)
    result = train(cfg)
    payload = load_checkpoint(result.best_checkpoint)
    recipe = load_config(TrainConfig, REPO / "configs" / f"{name}.toml")
    assert payload["arch"]["type"] == recipe.model
    assert payload["arch"]["dropout"] == recipe.dropout
    assert payload["preprocessing"]["train_image_size"] == recipe.image_size
    assert payload["train_config"]["weight_decay"] == recipe.weight_decay
    assert 1 <= result.epochs_run <= 3


@pytest.mark.slow
def test_tiny_benchmark_prints_each_recipe_with_the_check_on_and_off(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    out = run_benchmark("benchmark_tiny.py", "--data", data, "--repeats", "2",
                        "--recipes", "mlp,tiny-mlp", "--non-cats", "mixed",
                        "--out", tmp_path / "runs", "--train-args=--epochs 2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    for recipe in ("mlp", "tiny-mlp"):  # mean ± spread with the check on, then off
        row = rf"^{recipe}\s+2\s+\d+\.\d ± \d+\.\d %\s+\d+\.\d ± \d+\.\d %"
        assert re.search(row, out.stdout, re.M), out.stdout
