"""Evaluation and prediction for real use: calibration numbers, chosen thresholds, an "unsure"
band, resumable outputs, sorting pictures into folders, exit codes, JSON lines and TTA.

One small CNN is trained on the synthetic cats / cars / birds / houses / noise pictures for the
whole module; the key flows go through the real entry point (`python -m catnet`)."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import catnet_cli, tiny_config
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from catnet.cli import app

# The module trains a CNN for 30 epochs before its first test: all of it is slow.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
ROW_KEYS = {
    "path",
    "label",
    "p_cat",
    "error",
    "model",
    "threshold",
    "unfamiliar",
    "unfamiliar_score",
}


def strict_json(text: str) -> Any:
    """Parse JSON that must be strict (no NaN / Infinity)."""

    def reject(token: str) -> float:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=reject)


def json_rows(text: str) -> list[dict[str, Any]]:
    return [strict_json(line) for line in text.splitlines() if line.strip()]


def invoke(*args: str | Path) -> Any:
    """The CLI in-process (typer's CliRunner): faster, for everything but the key flows."""
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def one_error_line(stderr: str) -> bool:
    return sum(line.startswith("error:") for line in stderr.splitlines()) == 1


@dataclass(frozen=True)
class SynthRun:
    best: Path  # CNN trained on the synthetic pictures
    fresh: Path  # new tagged pictures (other seed): cats/ cars/ birds/ houses/ noise/
    pics: Path  # 10 untagged pictures of mixed kinds, to predict


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthRun:
    from catnet.demo.synthetic import generate_dataset, generate_unlabeled
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("synth")
    generate_dataset(base / "data", n_per_class=60, size=32, seed=0)
    generate_dataset(base / "fresh", n_per_class=8, size=32, seed=1)
    generate_unlabeled(base / "pics", 10, size=32, seed=2)
    # Smaller or shorter runs (width 8 for 10-20 epochs, val accuracy 80-95%; width 16 for 15-20)
    # gave full-resolution pixel noise p(cat) up to 0.8 for some seeds; width 16 for 30 epochs
    # (val ~97%) kept every nonsense picture below 0.61 for seeds 0-4 (0.26 for seed 0).
    cfg = tiny_config(
        base / "data", base / "run", base / "cache", image_size=32, width=16, epochs=30, seed=0
    )
    result = train(cfg)
    print(f"synthetic CNN: val accuracy {result.metrics['accuracy']:.1%}")
    return SynthRun(result.best_checkpoint, base / "fresh", base / "pics")


# --- evaluate: calibration and PR-AUC ---------------------------------------------------------


def test_evaluate_json_reports_calibration(synth: SynthRun) -> None:
    proc = catnet_cli("evaluate", synth.best, synth.fresh, "--json")
    assert proc.returncode == 0, proc.stderr
    m = strict_json(proc.stdout)
    for key in ("ece", "ece_uncalibrated", "pr_auc", "temperature", "roc_auc", "accuracy"):
        assert isinstance(m[key], float), (key, m[key])
    # The numbers are those of the scores evaluate() gives in-process, measured independently:
    # scikit-learn for the ranking metrics, the 15-bin numpy ECE of test_metrics_reference.
    from sklearn.metrics import average_precision_score, roc_auc_score
    from test_metrics_reference import numpy_ece

    from catnet.config import EvaluateConfig
    from catnet.evaluating.evaluation import evaluate

    result = evaluate(synth.best, synth.fresh, EvaluateConfig(workers=1))
    probs, labels = result.probs.numpy(), np.array([s.label for s in result.samples])
    raw = torch.sigmoid(result.logits).numpy()
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)
    assert m["pr_auc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-6)
    assert m["ece"] == pytest.approx(numpy_ece(probs, labels), abs=1e-5)
    assert m["ece_uncalibrated"] == pytest.approx(numpy_ece(raw, labels), abs=1e-5)
    assert m["accuracy"] == pytest.approx(((probs >= m["threshold"]) == labels).mean())
    assert m["roc_auc"] > 0.8  # the model learned the synthetic cats: the numbers mean something
    assert m["temperature"] == pytest.approx(
        torch.load(synth.best, weights_only=True)["temperature"]
    )
    assert m["n"] == 40


def test_evaluate_json_on_one_class_has_null_roc_auc(synth: SynthRun, tmp_path: Path) -> None:
    only = tmp_path / "only"
    (only / "cats").mkdir(parents=True)
    for path in sorted((synth.fresh / "cats").iterdir())[:4]:
        (only / "cats" / path.name).write_bytes(path.read_bytes())
    result = invoke("evaluate", synth.best, only, "--json")
    assert result.exit_code == 0, result.output
    m = strict_json(result.stdout)
    assert m["roc_auc"] is None and m["n"] == 4
    # Every picture is a cat, so precision is 1 at every threshold: average precision is 1,
    # whatever the scores. Every label is 1, so each bin's gap is 1 - its mean p(cat), and the
    # ECE is 1 - the mean p(cat) overall.
    assert m["pr_auc"] == 1.0
    from catnet.evaluating.evaluation import evaluate

    probs = evaluate(synth.best, only).probs
    assert m["ece"] == pytest.approx(1 - probs.double().mean().item(), abs=1e-5)


def test_evaluate_json_on_a_not_cat_only_folder(synth: SynthRun, tmp_path: Path) -> None:
    only = tmp_path / "only"
    (only / "dogs").mkdir(parents=True)
    for path in sorted((synth.fresh / "cars").iterdir())[:4]:
        (only / "dogs" / path.name).write_bytes(path.read_bytes())
    result = invoke("evaluate", synth.best, only, "--json", "--positive", "cats")
    assert result.exit_code == 0, result.output
    m = strict_json(result.stdout)
    assert m["roc_auc"] is None and m["n"] == 4


# --- thresholds -------------------------------------------------------------------------------


def test_pick_threshold_f1_saves_a_checkpoint_that_predict_uses(
    synth: SynthRun, tmp_path: Path
) -> None:
    from catnet.models.checkpoint import load_checkpoint

    plain = strict_json(invoke("evaluate", synth.best, synth.fresh, "--json").stdout)
    new = tmp_path / "f1.pt"
    result = invoke(
        "evaluate", synth.best, synth.fresh, "--pick-threshold", "f1", "--output", new, "--json"
    )
    assert result.exit_code == 0, result.output
    picked = strict_json(result.stdout)["picked_threshold"]
    payload = torch.load(new, weights_only=True)
    assert payload["threshold"] == picked["threshold"]
    assert payload["threshold_rule"]["rule"] == "f1"
    assert payload["threshold_rule"]["threshold"] == payload["threshold"]
    assert payload["threshold"] != 0.5 or picked["f1"] >= plain["f1"]
    load_checkpoint(new)  # still a valid checkpoint (checksum, format)

    again = strict_json(invoke("evaluate", new, synth.fresh, "--json").stdout)
    assert again["threshold"] == pytest.approx(picked["threshold"])
    assert again["f1"] == pytest.approx(picked["f1"], abs=1e-6)
    assert again["f1"] >= plain["f1"] - 1e-9  # the best F1 threshold beats 0.5 or ties

    proc = catnet_cli("predict", new, synth.fresh, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json_rows(proc.stdout)
    assert len(rows) == 40
    for row in rows:
        assert row["threshold"] == pytest.approx(payload["threshold"])
        if row["unfamiliar"]:  # the open-set check: never cat, whatever the threshold
            assert row["label"] == "not_cat"
        elif abs(row["p_cat"] - row["threshold"]) > 1e-5:
            assert row["label"] == ("cat" if row["p_cat"] >= row["threshold"] else "not_cat")

    overridden = invoke(
        "predict", new, synth.fresh, "--json", "--threshold", "0.0", "--no-open-set"
    )
    assert overridden.exit_code == 0, overridden.output
    rows = json_rows(overridden.stdout)
    assert {r["label"] for r in rows} == {"cat"} and {r["threshold"] for r in rows} == {0.0}


@pytest.mark.parametrize("rule", ["precision=0.9", "recall=0.9"])
def test_pick_threshold_by_precision_or_recall(synth: SynthRun, tmp_path: Path, rule: str) -> None:
    new = tmp_path / "picked.pt"
    result = invoke("evaluate", synth.best, synth.fresh, "--pick-threshold", rule, "--output", new)
    assert result.exit_code == 0, result.output
    payload = torch.load(new, weights_only=True)
    assert payload["threshold_rule"]["rule"] == rule
    m = strict_json(invoke("evaluate", new, synth.fresh, "--json").stdout)
    name = rule.split("=")[0]
    assert m[name] >= 0.9


@pytest.mark.parametrize("rule", ["precision=1.01", "recall=2", "precision=abc", "accuracy"])
def test_pick_threshold_impossible_or_unknown_rule(
    synth: SynthRun, tmp_path: Path, rule: str
) -> None:
    new = tmp_path / "never.pt"
    result = invoke("evaluate", synth.best, synth.fresh, "--pick-threshold", rule, "--output", new)
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output), result.output
    assert "Traceback" not in result.output
    assert not new.exists()


@pytest.mark.parametrize("rule", ["precision=1.01", "recall=-0.5", "precision=abc"])
def test_pick_threshold_explains_a_bad_target(synth: SynthRun, tmp_path: Path, rule: str) -> None:
    result = invoke(
        "evaluate",
        synth.best,
        synth.fresh,
        "--pick-threshold",
        rule,
        "--output",
        tmp_path / "x.pt",
    )
    assert result.exit_code == 2, result.output
    message = flat(result.output)
    assert "these pictures" not in message and "convert string" not in message, message
    assert rule.split("=")[0] in message, message  # says which setting is wrong


def test_pick_threshold_needs_output(synth: SynthRun) -> None:
    result = invoke("evaluate", synth.best, synth.fresh, "--pick-threshold", "f1")
    assert result.exit_code == 2
    assert "--output" in result.output


# --- unsure -----------------------------------------------------------------------------------


def test_unsure_band_in_evaluate_and_predict(synth: SynthRun) -> None:
    from catnet.config import EvaluateConfig
    from catnet.evaluating.evaluation import evaluate

    result = invoke("evaluate", synth.best, synth.fresh, "--unsure", "0.3,0.7", "--json")
    assert result.exit_code == 0, result.output
    m = strict_json(result.stdout)
    assert m["unsure_range"] == [0.3, 0.7]
    evaluated = evaluate(synth.best, synth.fresh, EvaluateConfig(workers=1))
    probs, labels, unfamiliar = (
        evaluated.probs, torch.tensor([s.label for s in evaluated.samples]), evaluated.unfamiliar
    )  # fmt: skip
    assert unfamiliar is not None  # unfamiliar pictures are unsure too
    inside = ((probs >= 0.3) & (probs <= 0.7)) | unfamiliar
    assert m["unsure_rate"] == pytest.approx(inside.float().mean().item())
    sure_hits = ((probs[~inside] >= m["threshold"]).long() == labels[~inside]).float().mean().item()
    assert m["sure_accuracy"] == pytest.approx(sure_hits) and m["n_sure"] == int((~inside).sum())

    rows = json_rows(invoke("predict", synth.best, synth.fresh, "--unsure", "0,1", "--json").stdout)
    assert len(rows) == 40 and {r["label"] for r in rows} == {"unsure"}
    rows = json_rows(
        invoke("predict", synth.best, synth.fresh, "--unsure", "0.3,0.7", "--json").stdout
    )
    for row in rows:
        if row["unfamiliar"] or 0.3 + 1e-5 < row["p_cat"] < 0.7 - 1e-5:
            assert row["label"] == "unsure", row
        elif not 0.3 - 1e-5 <= row["p_cat"] <= 0.7 + 1e-5:
            assert row["label"] in ("cat", "not_cat"), row


@pytest.mark.parametrize("band", ["0.8,0.2", "a,b", "0.3", "-0.1,0.5", "0.2,1.5"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_unsure_band_is_a_usage_error(synth: SynthRun, band: str, command: str) -> None:
    result = invoke(command, synth.best, synth.fresh, f"--unsure={band}")
    assert result.exit_code == 2, result.output
    assert "--unsure" in result.output


# --- not-cats are never confidently cats ------------------------------------------------------


def nonsense_pictures(folder: Path, size: int = 32) -> list[Path]:
    """30 pictures of nothing: pixel noise, blank solid colours and loose random shapes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2024)
    shapes = random.Random(2024)
    images: list[Image.Image] = []
    for _ in range(10):
        images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    for _ in range(10):
        images.append(
            Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        )
    for _ in range(10):
        big = size * 3
        img = Image.new("RGB", (big, big), tuple(shapes.randint(0, 255) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(shapes.randint(1, 5)):
            colour = tuple(shapes.randint(0, 255) for _ in range(3))
            x, y = shapes.uniform(0, big * 0.7), shapes.uniform(0, big * 0.7)
            s = big * shapes.uniform(0.1, 0.5)
            kind = shapes.choice(("rectangle", "ellipse", "line", "triangle"))
            if kind == "rectangle":
                d.rectangle((x, y, x + s, y + s * shapes.uniform(0.3, 1.5)), fill=colour)
            elif kind == "ellipse":
                d.ellipse((x, y, x + s, y + s * shapes.uniform(0.4, 1.2)), fill=colour)
            elif kind == "line":
                d.line((x, y, x + s, y + shapes.uniform(-s, s)), fill=colour, width=4)
            else:
                d.polygon([(x, y), (x + s, y + s * 0.3), (x + s * 0.4, y + s)], fill=colour)
        images.append(img.resize((size, size), Image.Resampling.LANCZOS))
    paths = []
    for i, img in enumerate(images):
        path = folder / f"nothing_{i:02d}.png"
        img.save(path)
        paths.append(path)
    return paths


def test_not_cats_are_never_confidently_cats(synth: SynthRun, tmp_path: Path) -> None:
    paths = nonsense_pictures(tmp_path / "nothing")
    proc = catnet_cli("predict", synth.best, tmp_path / "nothing", "--unsure", "0.3,0.8", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json_rows(proc.stdout)
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    confident = [(Path(r["path"]).name, r["p_cat"]) for r in rows if r["label"] == "cat"]
    print("p(cat) of nonsense:", sorted(round(r["p_cat"], 3) for r in rows))
    assert confident == []


# --- resumable output -------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return json_rows(path.read_text())
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def kill_after(path: Path, rows: int, cut_line: bool) -> list[str]:
    """Leave `path` as a run killed after `rows` rows would: the first rows (after a CSV
    header), and with cut_line half of the next line too. Returns the kept lines."""
    lines = path.read_text().splitlines(keepends=True)
    header = 1 if path.suffix == ".csv" else 0
    kept = lines[: header + rows]
    partial = lines[header + rows][: len(lines[header + rows]) // 2] if cut_line else ""
    path.write_text("".join(kept) + partial)
    return kept


def check_resumed(path: Path, kept: list[str], expected_paths: set[str]) -> None:
    text = path.read_text()
    assert text.startswith("".join(kept))  # the rows written before the kill stay as they were
    rows = read_rows(path)
    paths = [str(r["path"]) for r in rows]
    assert sorted(paths) == sorted(expected_paths)  # every input exactly once
    assert all(r["label"] in ("cat", "not_cat") for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_skip_done_finishes_a_killed_run_at_a_line_boundary(
    synth: SynthRun, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"rows{suffix}"
    assert invoke("predict", synth.best, synth.fresh, "-o", out).exit_code == 0
    expected = {str(r["path"]) for r in read_rows(out)}
    assert len(expected) == 40
    kept = kill_after(out, 15, cut_line=False)
    result = invoke("predict", synth.best, synth.fresh, "-o", out, "--skip-done")
    assert result.exit_code == 0, result.output
    check_resumed(out, kept, expected)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_skip_done_finishes_a_run_killed_mid_line(
    synth: SynthRun, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"rows{suffix}"
    proc = catnet_cli("predict", synth.best, synth.fresh, "-o", out)
    assert proc.returncode == 0, proc.stderr
    expected = {str(r["path"]) for r in read_rows(out)}
    kept = kill_after(out, 15, cut_line=True)
    proc = catnet_cli("predict", synth.best, synth.fresh, "-o", out, "--skip-done")
    assert proc.returncode == 0, proc.stderr
    check_resumed(out, kept, expected)


def test_skip_done_needs_output(synth: SynthRun) -> None:
    result = invoke("predict", synth.best, synth.fresh, "--skip-done")
    assert result.exit_code == 2
    assert "--output" in result.output


# --- sorting into folders ---------------------------------------------------------------------


def sorted_files(dest: Path) -> dict[str, list[str]]:
    return {
        d.name: sorted(f.name for f in d.iterdir()) for d in sorted(dest.iterdir()) if d.is_dir()
    }


def test_sort_into_copies_by_label(synth: SynthRun, tmp_path: Path) -> None:
    dest = tmp_path / "sorted"
    result = invoke("predict", synth.best, synth.pics, "--sort-into", dest, "--json")
    assert result.exit_code == 0, result.output
    rows = json_rows(result.stdout)
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(Path(row["path"]).name)
    assert sorted_files(dest) == {k: sorted(v) for k, v in sorted(by_label.items())}
    for label, names in by_label.items():
        for name in names:
            copy = dest / label / name
            assert copy.read_bytes() == (synth.pics / name).read_bytes()
            assert os.stat(copy).st_ino != os.stat(synth.pics / name).st_ino
    again = invoke("predict", synth.best, synth.pics, "--sort-into", dest)
    assert again.exit_code == 0, again.output
    assert sorted_files(dest) == {k: sorted(v) for k, v in sorted(by_label.items())}


def test_sort_into_cat_not_cat_unsure_with_hard_links(synth: SynthRun, tmp_path: Path) -> None:
    rows = json_rows(invoke("predict", synth.best, synth.pics, "--json").stdout)
    levels = sorted({r["p_cat"] for r in rows})
    assert len(levels) >= 4, levels

    def mid(i: int) -> str:
        return repr((levels[i] + levels[i + 1]) / 2)

    # levels[0] -> not_cat, levels[1] -> unsure, levels[2] -> not_cat, levels[3:] -> cat
    options = ["--unsure", f"{mid(0)},{mid(1)}", "--threshold", mid(2), "--link"]
    dest = tmp_path / "sorted"
    result = invoke("predict", synth.best, synth.pics, "--sort-into", dest, "--json", *options)
    assert result.exit_code == 0, result.output
    rows = json_rows(result.stdout)
    labels = {Path(r["path"]).name: r["label"] for r in rows}
    assert set(labels.values()) == {"cat", "not_cat", "unsure"}
    found = sorted_files(dest)
    assert set(found) == {"cat", "not_cat", "unsure"}
    assert sum(len(v) for v in found.values()) == len(rows) == 10
    for label, names in found.items():
        for name in names:
            assert labels[name] == label
            assert os.stat(dest / label / name).st_ino == os.stat(synth.pics / name).st_ino
    again = invoke("predict", synth.best, synth.pics, "--sort-into", dest, *options)
    assert again.exit_code == 0, again.output
    assert sorted_files(dest) == found  # no duplicates on a second run


def test_sort_into_a_folder_inside_the_input_predicts_no_copies(
    synth: SynthRun, tmp_path: Path
) -> None:
    pics = tmp_path / "pics"
    shutil.copytree(synth.pics, pics)
    dest = pics / "sorted"  # inside the folder being predicted, as `--sort-into ./sorted` in it
    first = invoke("predict", synth.best, pics, "--sort-into", dest, "--json")
    assert first.exit_code == 0, first.output
    again = invoke("predict", synth.best, pics, "--sort-into", dest, "--json")
    assert again.exit_code == 0, again.output
    for result in (first, again):
        paths = [row["path"] for row in json_rows(result.stdout)]
        assert len(paths) == 10 and not [p for p in paths if str(dest) in p]
    assert sum(len(v) for v in sorted_files(dest).values()) == 10


# --- exit codes and JSON lines ----------------------------------------------------------------


def test_predict_json_lines_and_exit_code_one_for_unreadable(
    synth: SynthRun, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(synth.pics.iterdir())[:3]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    proc = catnet_cli("predict", synth.best, folder, "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    rows = json_rows(proc.stdout)
    assert len(rows) == 4
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["model"], str) and len(row["model"]) == 12
        assert row["threshold"] == pytest.approx(0.5)
    (bad,) = [r for r in rows if r["path"].endswith("garbage.jpg")]
    assert bad["label"] == "error" and bad["p_cat"] is None and bad["error"]
    fine = [r for r in rows if r is not bad]
    assert all(r["label"] in ("cat", "not_cat") and r["error"] == "" for r in fine)
    assert all(0.0 <= r["p_cat"] <= 1.0 for r in fine)

    proc = catnet_cli("predict", synth.best, *good, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in json_rows(proc.stdout)] == [str(p) for p in good]


def test_predict_usage_errors_exit_two(synth: SynthRun, tmp_path: Path) -> None:
    proc = catnet_cli("predict", tmp_path / "missing.pt", synth.pics)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert one_error_line(proc.stderr) and "Traceback" not in proc.stderr
    assert "missing.pt" in proc.stderr
    proc = catnet_cli("predict", synth.best, synth.pics, "--no-such-option")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    result = invoke("evaluate", tmp_path / "missing.pt", synth.fresh)
    assert result.exit_code == 2


def test_predict_a_missing_file_is_an_error_row(synth: SynthRun, tmp_path: Path) -> None:
    result = invoke("predict", synth.best, tmp_path / "gone.png", "--json")
    assert result.exit_code == 1
    (row,) = json_rows(result.stdout)
    assert row["label"] == "error" and row["error"]


# --- test-time augmentation -------------------------------------------------------------------


def p_cats(checkpoint: Path, folder: Path, *options: str) -> dict[str, float]:
    result = invoke("predict", checkpoint, folder, "--json", *options)
    assert result.exit_code == 0, result.output
    return {r["path"]: r["p_cat"] for r in json_rows(result.stdout)}


def test_tta_switches_in_predict_and_evaluate(synth: SynthRun, tmp_path: Path) -> None:
    from catnet.models.checkpoint import load_checkpoint, save_checkpoint

    assert torch.load(synth.best, weights_only=True)["tta"] is True
    with_tta = p_cats(synth.best, synth.pics, "--tta")
    without = p_cats(synth.best, synth.pics, "--no-tta")
    assert with_tta.keys() == without.keys()
    assert with_tta != without  # the mirror image changes the answer a little
    assert max(abs(with_tta[k] - without[k]) for k in with_tta) < 0.5
    assert p_cats(synth.best, synth.pics) == with_tta  # the default follows the checkpoint

    payload = load_checkpoint(synth.best)
    payload["tta"] = False
    no_tta_ckpt = save_checkpoint(payload, tmp_path / "no_tta.pt")
    assert p_cats(no_tta_ckpt, synth.pics) == without
    assert p_cats(no_tta_ckpt, synth.pics, "--tta") == with_tta

    metrics: dict[str, dict[str, Any]] = {}
    for flag in ("--tta", "--no-tta"):
        result = invoke("evaluate", synth.best, synth.fresh, flag, "--json")
        assert result.exit_code == 0, result.output
        metrics[flag] = strict_json(result.stdout)
    keys = ("ece_uncalibrated", "ece", "pr_auc", "roc_auc")
    assert [metrics["--tta"][k] for k in keys] != [metrics["--no-tta"][k] for k in keys]
    default = strict_json(invoke("evaluate", synth.best, synth.fresh, "--json").stdout)
    assert default["ece_uncalibrated"] == metrics["--tta"]["ece_uncalibrated"]
