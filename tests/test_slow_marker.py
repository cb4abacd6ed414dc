"""The suite's own rule: a test that starts a Python process or trains carries the slow marker,
so `pytest -m "not slow"` stays quick. conftest's guard fails any test that breaks it; these
tests are unmarked, so the guard is on while they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_dataset, tiny_config


def test_an_unmarked_test_cannot_start_python() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"starts a Python process.*not marked slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(pytest.fail.Exception, match="not marked slow"):
        subprocess.run(["catnet", "--help"], check=False)


def test_an_unmarked_test_may_run_a_quick_program() -> None:
    """ctypes.util.find_library runs `ldconfig -p`: milliseconds, no new interpreter."""
    assert subprocess.run(["true"], check=False).returncode == 0


def test_an_unmarked_test_cannot_train(tmp_path: Path) -> None:
    from catnet.training.loop import train

    data = make_dataset(tmp_path / "data", n_per_class=4, size=16)
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "cache", image_size=16, epochs=1)
    with pytest.raises(pytest.fail.Exception, match=r"trains.*not marked slow"):
        train(cfg)


@pytest.mark.slow
def test_a_slow_test_may_start_python() -> None:
    proc = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    assert proc.stdout.strip() == "42"
