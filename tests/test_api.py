"""The Python API: `import catnet` and use a trained model without the CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import REPO, TrainedRun, draw_picture, prob_tol
from PIL import Image

import catnet


def test_public_names_are_callables() -> None:
    for name in ("train", "evaluate", "predict", "load_model"):
        assert callable(getattr(catnet, name)), name
    assert set(catnet.__all__) >= {"train", "evaluate", "predict", "load_model", "__version__"}
    assert (
        catnet.__version__
        == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    )
    with pytest.raises(AttributeError):
        _ = catnet.no_such_thing  # type: ignore[attr-defined]


@pytest.mark.slow  # a fresh interpreter
def test_import_catnet_is_light() -> None:
    code = "import sys, catnet; print('torch' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "False"


def test_load_model(trained: TrainedRun) -> None:
    model = catnet.load_model(trained.best)
    # Trained on 24 px crops, shown whole pictures at the decoded size (FixRes): 28 px.
    assert isinstance(model.image_size, int) and model.image_size == 28 == model.decode_size
    assert model.payload["preprocessing"]["train_image_size"] == 24
    assert isinstance(model.threshold, float) and 0 < model.threshold < 1
    assert model.temperature > 0
    assert isinstance(model.module, torch.nn.Module)
    assert not model.module.training  # ready for inference
    device = next(model.module.parameters()).device
    x = torch.rand(3, 3, model.image_size, model.image_size, device=device)
    with torch.no_grad():
        logits = model.module(x)
    assert logits.shape == (3,) and logits.dtype == torch.float32


def test_load_model_accepts_str_paths(trained: TrainedRun) -> None:
    assert catnet.load_model(str(trained.best)).image_size == 28


def test_model_predict_images_and_paths(trained: TrainedRun, tmp_path: Path) -> None:
    model = catnet.load_model(trained.best)
    cat_path = next((trained.data / "cats").glob("*.png"))
    rgba = draw_picture("cats", 5, 40).convert("RGBA")
    gray = draw_picture("dogs", 6, 30).convert("L")
    missing = tmp_path / "missing.png"
    preds = model.predict([rgba, cat_path, str(cat_path), gray, missing, trained.broken])
    assert len(preds) == 6
    for pred in preds[:4]:
        assert pred.label in ("cat", "not_cat") and pred.error == ""
        assert pred.p_cat is not None and 0.0 <= pred.p_cat <= 1.0
        assert pred.label == ("cat" if pred.p_cat >= model.threshold else "not_cat")
    assert preds[0].path == "<image 0>" and preds[1].path == str(cat_path)
    assert preds[1].p_cat == pytest.approx(preds[2].p_cat, abs=prob_tol())
    assert [p.label for p in preds[4:]] == ["error", "error"]
    assert "not found" in preds[4].error and "not a picture" in preds[5].error
    assert preds[4].p_cat is None


def test_model_predict_matches_the_file_it_was_saved_as(
    trained: TrainedRun, tmp_path: Path
) -> None:
    """A PIL image in memory and the same picture read from a PNG give the same answer."""
    model = catnet.load_model(trained.best)
    img = draw_picture("cats", 7, 32)
    img.save(tmp_path / "same.png")
    in_memory, from_file = model.predict([img, tmp_path / "same.png"])
    assert in_memory.p_cat == pytest.approx(from_file.p_cat, abs=prob_tol())


def test_model_predict_empty_list(trained: TrainedRun) -> None:
    assert catnet.load_model(trained.best).predict([]) == []


def test_model_predict_tta_is_symmetric(trained: TrainedRun) -> None:
    model = catnet.load_model(trained.best)
    img = draw_picture("cats", 11, 24)
    mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a, b = model.predict([img, mirror], tta=True)
    assert a.p_cat == pytest.approx(b.p_cat, abs=prob_tol())


def test_api_evaluate_and_predict(trained: TrainedRun, tmp_path: Path) -> None:
    result = catnet.evaluate(trained.best, trained.data)
    assert result.metrics["n"] == 24 and result.metrics["skipped"] == 1
    assert len(result.samples) == 24 and result.probs.shape == (24,)
    rows: list = []
    summary = catnet.predict(trained.best, [str(trained.data / "dogs")], on_row=rows.append)
    assert len(rows) == 12
    assert summary["counts"]["error"] == 0
    assert sum(summary["counts"].values()) == 12
    assert summary["model"] == catnet.load_model(trained.best).hash
