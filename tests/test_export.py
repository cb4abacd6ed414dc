"""Exported graphs reproduce PyTorch's logits on real pictures and carry the preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import catnet_cli

from catnet.data.folders import list_files
from catnet.predicting.export import export, picture_batch, run_export
from catnet.predicting.prediction import load_model


def test_torchscript_matches_pytorch_and_carries_metadata(trained, tmp_path: Path) -> None:
    ckpt = trained.best
    pictures = [p for p in list_files(trained.data) if p.suffix == ".png"][:8]
    result = export(ckpt, "torchscript", tmp_path / "m.ts", pictures)
    assert result["max_abs_diff"] < 1e-4
    extra = {"catnet.json": ""}
    torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    meta = json.loads(extra["catnet.json"])
    model = load_model(ckpt)
    assert int(meta["image_size"]) == model.image_size
    assert json.loads(meta["mean"]) == list(model.mean)
    assert float(meta["threshold"]) == model.threshold


def test_onnx_matches_pytorch_on_real_pictures(trained, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    ckpt = trained.best
    pictures = [p for p in list_files(trained.data) if p.suffix == ".png"][:8]
    result = export(ckpt, "onnx", tmp_path / "m.onnx", pictures)
    assert result["max_abs_diff"] < 1e-3
    model = load_model(ckpt)
    batch = picture_batch(model, pictures)
    with torch.no_grad():
        expected = model.module.float()(batch).numpy()
    got = run_export("onnx", tmp_path / "m.onnx", batch)
    assert got.shape == expected.shape == (len(pictures),)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert int(props["image_size"]) == model.image_size and "std" in props


def test_export_cli_rejects_unknown_format(trained, tmp_path: Path) -> None:
    result = catnet_cli("export", trained.best, "--format", "pickle", "--output", tmp_path / "x")
    assert result.returncode == 2
    assert "onnx or torchscript" in result.stderr and "Traceback" not in result.stderr
