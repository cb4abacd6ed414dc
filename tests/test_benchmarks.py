"""The benchmark scripts run end to end on a tiny folder, so that they cannot rot unnoticed.
Only that they run and print every row is checked: timings are never asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import make_dataset, run_benchmark

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_speed_benchmark_prints_every_row(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    # 32 px, not the default 64: a quarter of the pixels in every forward pass it times
    out = run_benchmark("benchmark_speed.py", "--data", data, "--skip-baseline",
                        "--predict-files", "48", "--image-size", "32", "--rounds", "1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    for row in ("(b)", "(c)", "(c')"):
        line = next(x for x in out.stdout.splitlines() if x.startswith(row + " "))
        assert re.search(r"\d+\.\d\d\s+>= 0\.8$", line), line  # a ratio was computed
    assert "(d) cache build" in out.stdout and "for 40 pictures" in out.stdout


def test_accuracy_benchmark_trains_and_scores_each_model(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    out = run_benchmark("benchmark_accuracy.py", "--data", data, "--time-budget", "4",
                        "--repeats", "1", "--models", "mlp", "--out", tmp_path / "runs",
                        "--train-args=--epochs 2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"^mlp\s+1\s+\d+\.\d ± \d+\.\d %", out.stdout, re.M), out.stdout


@pytest.mark.slow
def test_openset_benchmark_prints_before_and_after(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    out = run_benchmark("benchmark_openset.py", "--data", data, "--time-budget", "4",
                        "--splits", "1", "--rounds", "1", "--models", "mlp",
                        "--out", tmp_path / "runs")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"assorted tagged cat \d+/160 \(.*\) -> \d+/160", out.stdout), out.stdout
    assert re.search(r"network on/off \d+\.\d\d\d", out.stdout), out.stdout
    # every variant measured, today's rule and the adopted one among them
    for variant in (
        r"today \(val, q\.99, k10\)",
        r"val\+loo, q0\.995",
        r"class, val\+loo, q0\.995",
    ):
        assert re.search(variant + r"\s+\|\s+\d+\.\d\d ±\s+\d+\.\d\d", out.stdout), out.stdout


def test_calibration_benchmark_prints_ece_before_and_after(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    out = run_benchmark("benchmark_calibration.py", "--data", data, "--sizes", "6",
                        "--splits", "1", "--out", tmp_path / "runs",
                        "--train-args=--image-size 64")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+6 \| \d\.\d{4} ± \d\.\d{4}\s+\| \d\.\d{4}", out.stdout, re.M), out.stdout
