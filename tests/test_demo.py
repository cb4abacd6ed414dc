"""`catnet demo` runs end to end offline (with a tiny time budget here; the README's full demo
is measured in the closing notes, not asserted: tests never assert wall-clock times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "catnet", "demo", "--out", str(out), "--time-budget", "4"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
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
