"""`catnet demo` runs end to end offline (with a tiny time budget here; the README's full demo
is measured in the closing notes, not asserted: tests never assert wall-clock times)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import catnet_cli

pytestmark = pytest.mark.slow  # trains three models

# Per class and split: 5 classes, so 120 training pictures, still over FULL_BATCH_PHOTOS: the
# pretrained head trains in minibatches, as in the full demo (350 a class, 40 epochs a network,
# take minutes: what is checked here is that every step runs and prints, not how well).
SPLITS = {"train": 24, "val": 8, "test": 8}
EPOCHS = 2


def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catnet.demo import run
    from catnet.training.recipes import FULL_BATCH_PHOTOS

    assert SPLITS["train"] * 5 >= FULL_BATCH_PHOTOS
    monkeypatch.setattr(run, "SPLITS", SPLITS)
    configs = run.demo_configs
    monkeypatch.setattr(run, "demo_configs", lambda *args: {
        name: dataclasses.replace(cfg, epochs=EPOCHS) for name, cfg in configs(*args).items()
    })  # fmt: skip
    out = tmp_path / "demo"
    result = catnet_cli("demo", "--out", out, "--time-budget", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (out / "data" / split).iterdir()) == [
            "birds", "cars", "cats", "houses", "noise",
        ]  # fmt: skip
    for model in ("cnn", "mlp", "pretrained"):
        assert (out / "runs" / model / "best.pt").is_file()
        assert (out / "runs" / model / "curves.png").is_file()
    assert "test accuracy" in result.stdout
    assert result.stdout.count("p(cat)=") == 8  # eight new, untagged pictures tagged
    assert str(out) in result.stdout
