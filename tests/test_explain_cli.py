"""catnet explain as a user meets it: the command (paths mirrored, bad input, odd names, JSON),
the Python API, the evaluation report's heatmaps, info --neurons, and the config."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import catnet_cli, draw_picture, single_thread, tiny_config
from PIL import Image

from catnet.errors import CatnetError
from catnet.explaining.explain import explain_images
from catnet.explaining.explain_files import COLUMNS, output_for, output_root

# ---------------------------------------------------------------- output paths


def test_output_paths_mirror_the_inputs(tmp_path: Path) -> None:
    for folder in ("cats", "dogs"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "1.jpg").write_bytes(b"")
    data = tmp_path / "data"
    out = tmp_path / "out"
    root = output_root([str(data / "cats"), str(data / "dogs"), str(tmp_path / "missing.jpg")])
    assert root == data  # the missing file is an error row, not a reason to widen the root
    paths = {output_for(data / c / "1.jpg", root, out) for c in ("cats", "dogs")}
    assert paths == {out / "cats" / "1.jpg.png", out / "dogs" / "1.jpg.png"}
    assert output_root([str(data)]) == data
    assert output_root([str(data / "cats" / "1.jpg")]) == data / "cats"
    assert output_root([str(data / "*" / "*.jpg")]) == data


# ---------------------------------------------------------------- the command and the API


def _same_names(tmp_path: Path) -> Path:
    """in/cats/same.png, in/dogs/same.png (a cat and a not-cat of one name) and a broken file."""
    root = tmp_path / "in"
    for folder, kind in (("cats", "cat"), ("dogs", "dog")):
        (root / folder).mkdir(parents=True)
        draw_picture(kind, 1, 24).save(root / folder / "same.png")
    (root / "cats" / "broken.jpg").write_text("not a picture\n")
    return root


def test_explain_cli_mirrors_paths_and_goes_on_after_errors(trained, tmp_path: Path) -> None:
    root = _same_names(tmp_path)
    out = tmp_path / "out"
    proc = catnet_cli("explain", trained.best, root, "--out", out, "--json")
    assert proc.returncode == 1, proc.stderr  # some files failed, like predict
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    rows = {Path(r["path"]).relative_to(root).as_posix(): r for r in lines}
    assert set(rows) == {"cats/same.png", "cats/broken.jpg", "dogs/same.png"}
    assert rows["cats/broken.jpg"]["label"] == "error" and rows["cats/broken.jpg"]["error"]
    for name in ("cats/same.png", "dogs/same.png"):
        row = rows[name]
        assert row["output"] == str(out / (name + ".png"))
        assert row["explained"] == row["label"] and row["method"] == "grad-cam"
        with Image.open(row["output"]) as img:
            assert img.format == "PNG" and img.width >= 360
    with (out / "index.csv").open(newline="") as fh:
        index = list(csv.DictReader(fh))
    assert tuple(index[0]) == COLUMNS and len(index) == 3
    # Each answered row carries the threshold it was made with, as predict's rows do, so that
    # `correct --from index.csv` reads the model's answer back right (not at 0.5).
    from catnet.models.checkpoint import load_checkpoint

    own = float(load_checkpoint(trained.best)["threshold"])
    assert all(float(r["threshold"]) == own for r in index if r["p_cat"])
    assert Image.open(out / "contact_sheet.png").width > 0
    assert "images/s" in proc.stderr and "Grad-CAM" in proc.stderr


def test_explain_does_not_explain_its_own_output(trained, tmp_path: Path) -> None:
    root = _same_names(tmp_path)
    (root / "cats" / "broken.jpg").unlink()
    os.chdir(root)
    for _ in range(2):  # the second run must not pick up explain/cats/same.png.png
        proc = catnet_cli("explain", trained.best, ".", "--json")
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 2


def test_explain_json_and_csv_stay_valid_with_odd_names(trained, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ['a "quote", comma.png', "new\nline.png", "tab\there.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        draw_picture("cat", i, 24).save(os.path.join(folder, name), "PNG")
    proc = catnet_cli("explain", trained.best, folder, "--out", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    got = {os.path.basename(json.loads(line)["path"]) for line in proc.stdout.splitlines()}
    assert got == set(names)
    index = tmp_path / "out" / "index.csv"
    with index.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    assert {os.path.basename(r["path"]) for r in rows} == set(names)
    assert all(os.path.exists(r["output"]) for r in rows)


def test_explain_without_pictures_is_a_usage_error(trained, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = catnet_cli("explain", trained.best, tmp_path / "empty")
    assert proc.returncode == 2 and "no pictures" in proc.stderr
    proc = catnet_cli("explain", trained.best, tmp_path / "empty", "--target", "dog")
    assert proc.returncode == 2 and "target" in proc.stderr
    (tmp_path / "a-file").write_text("")
    proc = catnet_cli("explain", trained.best, trained.data, "--out", tmp_path / "a-file")
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_api_returns_maps_in_each_pictures_own_size(trained, tmp_path: Path) -> None:
    from catnet import load_model

    model = load_model(trained.best)
    wide = draw_picture("cat", 3, 24).resize((50, 30))
    path = tmp_path / "p.png"
    draw_picture("dog", 4, 24).save(path)
    maps = explain_images(model, [wide, path])
    assert [m.shape for m in maps] == [(30, 50), (24, 24)]
    assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in maps)
    assert (maps[0][:, :10] == 0).all()  # left of the centre square: never seen
    # "predicted" explains each picture's own answer, whichever side that is.
    for picture, pred, m in zip([wide, path], model.predict([wide, path]), maps, strict=True):
        # (batch of 2 against a batch of 1: the same map up to float rounding, ~1e-7)
        assert np.allclose(m, explain_images(model, [picture], target=pred.label)[0], atol=1e-5)
    # longest: a display's map, the shape kept (the labelling page's overlays); small
    # pictures keep their own size
    small = explain_images(model, [wide, path], longest=25)
    assert [m.shape for m in small] == [(15, 25), (24, 24)]
    assert np.allclose(small[0], maps[0][::2, ::2], atol=0.15)  # the same map, coarser
    # a JPEG still being read: decoding it small (Image.draft) does not shrink its map
    wide.resize((300, 200)).save(tmp_path / "wide.jpg")
    with Image.open(tmp_path / "wide.jpg") as lazy:
        assert explain_images(model, [lazy])[0].shape == (200, 300)
    with pytest.raises(CatnetError, match="cannot explain"):
        explain_images(model, [tmp_path / "missing.png"])


@pytest.mark.slow
def test_mlp_says_it_has_no_conv_maps_and_draws_its_neurons(tmp_path: Path, make_dataset) -> None:
    from catnet.training.loop import train

    data = make_dataset(tmp_path / "data", n_per_class=8, size=16)
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "cache", model="mlp", hidden=[6],
                      image_size=16, epochs=1)  # fmt: skip
    with single_thread():
        best = train(cfg).best_checkpoint
    proc = catnet_cli("explain", best, data / "cats", "--out", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "MLP has no convolutional feature maps" in proc.stderr
    assert {json.loads(line)["method"] for line in proc.stdout.splitlines()} == {"saliency"}
    proc = catnet_cli("info", best, "--neurons", tmp_path / "neurons.png")
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "neurons.png") as img:
        assert img.width > 16 * 4 * 6  # six neurons side by side, 4x enlarged


def test_neurons_of_a_cnn_are_refused(trained, tmp_path: Path) -> None:
    proc = catnet_cli("info", trained.best, "--neurons", tmp_path / "n.png")
    assert proc.returncode == 2 and "MLP" in proc.stderr
    assert not (tmp_path / "n.png").exists()


# ---------------------------------------------------------------- the evaluation report


@pytest.mark.parametrize(("threshold", "why"), [(0.999, "not-cat"), (0.001, "cat")])
def test_report_shows_each_mistakes_heatmap(trained, tmp_path: Path, threshold, why) -> None:
    """A threshold near 1 makes every cat a mistake called not-cat (the negative logit's map),
    near 0 every not-cat a mistake called cat: both sides appear, and the page stays one
    offline file."""
    from catnet.config import EvaluateConfig
    from catnet.evaluating.evaluation import evaluate
    from catnet.evaluating.report import write_report

    result = evaluate(trained.best, trained.data, EvaluateConfig(threshold=threshold, workers=1))
    text = write_report(result, tmp_path / "r", top_n=3, checkpoint=trained.best).read_text()
    assert text.count(f'alt="heatmap: evidence for {why}"') == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[^"'\s>]""", text)  # data: only


def test_explain_config_checks_its_values() -> None:
    from catnet.config import ExplainConfig, load_config

    assert load_config(ExplainConfig, None, {"target": "cat"}).target == "cat"
    for bad in ({"target": "dog"}, {"batch_size": 0}, {"sheet_max": -1}, {"colour": "red"}):
        with pytest.raises(CatnetError):
            load_config(ExplainConfig, None, bad)
