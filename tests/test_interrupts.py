"""Killed and interrupted training loses nothing: Ctrl-C saves and says how to resume (exit 130),
SIGTERM and SIGHUP do the same (exit 143 and 129; a second signal ends at once), SIGKILL at any
moment leaves complete checkpoints, and --resume continues without duplicate rows."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TrainedRun, catnet_cli, make_dataset, write_class

pytestmark = pytest.mark.slow  # trains in `python -m catnet` processes and stops them

# Many epochs: the stop must land while training runs, and an epoch of this network takes
# ~25 ms (40 epochs could all be done before the test's poll saw the first).
TRAIN_ARGS = [
    "--model",
    "cnn",
    "--epochs",
    "2000",
    "--width",
    "8",
    "--depth",
    "2",
    "--image-size",
    "24",
    "--batch-size",
    "8",
]


def start_training(data: Path, run: Path, env: dict[str, str]) -> subprocess.Popen:
    """The training with SIGHUP at its default even when the tests run under nohup: catnet
    leaves an ignored SIGHUP ignored on purpose (cli/signals.py), as nohup asks."""
    cmd = [sys.executable, "-m", "catnet", "train", str(data), "--out", str(run), *TRAIN_ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # fmt: skip


def wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until metrics.csv has n epoch rows (polling; the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.communicate()[1][-2000:]}")
        if len(epochs_in(run)) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training did not reach the epoch in time")


def epochs_in(run: Path) -> list[int]:
    try:
        with (run / "metrics.csv").open() as fh:
            return [int(row["epoch"]) for row in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError):
        return []


def assert_complete_checkpoints(run: Path) -> None:
    """Every checkpoint present loads safely and passes its checksum."""
    from catnet.models.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (run / name).exists():
            payload = load_checkpoint(run / name)
            assert torch.load(run / name, weights_only=True)["format"] == "catnet-checkpoint"
            assert payload["epoch"] >= 0


def resume_until(run: Path, target: int, env: dict[str, str]) -> None:
    """`catnet train --resume RUN/last.pt --epochs target` must succeed. In-process, with the
    killed run's cache: what is tested is what the stop left behind, not the resume's process."""
    result = catnet_in(env, "train", "--resume", run / "last.pt", "--epochs", target)
    assert result.returncode == 0, result.stderr[-2000:]


def catnet_in(env: dict[str, str], *args: str | Path | int) -> subprocess.CompletedProcess[str]:
    """catnet_cli with the test's CATNET_CACHE (the processes' environment)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATNET_CACHE", env["CATNET_CACHE"])
        return catnet_cli(*map(str, args))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CATNET_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def test_ctrl_c_saves_prints_resume_and_exits_130(tmp_path: Path, env: dict[str, str]) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=16, size=24)
    run = tmp_path / "run"
    proc = start_training(data, run, env)
    wait_for_epochs(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "catnet train --resume" in stderr and "last.pt" in stderr
    assert_complete_checkpoints(run)
    done = epochs_in(run)
    assert done == list(range(1, len(done) + 1))

    # Resume with fewer total epochs than planned so the test ends quickly.
    target = done[-1] + 2
    resume_until(run, target, env)
    assert epochs_in(run) == list(range(1, target + 1))  # no duplicated or missing rows


@pytest.mark.parametrize("after_epochs", [1, 3])
def test_sigkill_leaves_complete_checkpoints_and_resumes(
    tmp_path: Path, env: dict[str, str], after_epochs: int
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=16, size=24)
    run = tmp_path / "run"
    proc = start_training(data, run, env)
    wait_for_epochs(run, after_epochs, proc)
    time.sleep(0.03 * after_epochs)  # land at different moments within an epoch
    proc.kill()
    proc.communicate()
    assert_complete_checkpoints(run)
    from catnet.models.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "last.pt")["epoch"]
    resume_until(run, saved + 1, env)
    target = saved + 1
    assert epochs_in(run) == list(range(1, target + 1))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_stop_signals_act_like_ctrl_c(
    tmp_path: Path, env: dict[str, str], signum: int, code: int
) -> None:
    """What a cluster scheduler or `docker stop` (SIGTERM) and a closed terminal (SIGHUP) send:
    the finished epochs are kept, the resume command is printed, the exit code is 128 + signal."""
    data = make_dataset(tmp_path / "data", n_per_class=16, size=24)
    run = tmp_path / "run"
    proc = start_training(data, run, env)
    wait_for_epochs(run, 1, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert "catnet train --resume" in stderr and "last.pt" in stderr
    assert_complete_checkpoints(run)
    done = epochs_in(run)
    assert done == list(range(1, len(done) + 1))
    resume_until(run, done[-1] + 1, env)
    assert epochs_in(run) == list(range(1, done[-1] + 2))


SLOW_CLEANUP = """
import time
from catnet.cli.signals import install_stop_handlers
from catnet.errors import Stopped

install_stop_handlers()
try:  # "ready" inside the try: a signal that lands just after the print is still caught
    print("ready", flush=True)
    time.sleep(120)
except Stopped:
    print("cleaning up", flush=True)
    time.sleep(120)  # a clean-up that would take two minutes
"""


def test_a_second_signal_stops_at_once(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "cleaning up\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # not the two minutes of the clean-up
    assert proc.returncode == 143


def test_sigterm_stops_predict_with_whole_rows(
    tmp_path: Path, trained: TrainedRun, env: dict[str, str]
) -> None:
    """predict writing JSON lines to a reader that has stopped reading (so it is surely still
    running): SIGTERM ends it with 143, no traceback, and every line it wrote is whole."""
    pictures = tmp_path / "pictures"
    write_class(pictures, "cats", 250, 16)
    write_class(pictures, "dogs", 250, 16)  # 500 rows: more than a 64 KiB pipe holds
    cmd = [sys.executable, "-m", "catnet", "predict", str(trained.best), str(pictures), "--json"]
    # bufsize=0: readline must not read ahead, because communicate() reads the pipe's file
    # descriptor directly and would never see bytes left in a reader's buffer.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # rows are flowing; now the pipe fills up and predict waits
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr and b"stopped by SIGTERM" in stderr
    lines = (first + rest).decode().splitlines()
    assert 0 < len(lines) < 500
    for line in lines[:-1]:  # the last one may have been cut by the signal mid-write
        assert json.loads(line)["label"] in ("cat", "not_cat")


def test_sigterm_during_finetune_prints_the_resume_command(
    tmp_path: Path, trained: TrainedRun, env: dict[str, str]
) -> None:
    run = tmp_path / "tuned"
    cmd = [sys.executable, "-m", "catnet", "finetune", str(trained.best), str(trained.data),
           "--epochs", "2000", "--out", str(run)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_epochs(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    assert f"catnet train --resume {run / 'last.pt'}" in stderr
    assert_complete_checkpoints(run)


def test_a_resume_rewrites_metrics_from_the_checkpoint(tmp_path: Path, env: dict[str, str]) -> None:
    """A stop that lands after last.pt was written but before metrics.csv was: the resume
    restores the missing row from the history last.pt carries, even with nothing left to train."""
    data = make_dataset(tmp_path / "data", n_per_class=16, size=24)
    run = tmp_path / "run"
    args = [a if a != "2000" else "2" for a in TRAIN_ARGS]  # --epochs 2
    assert catnet_in(env, "train", data, "--out", run, *args).returncode == 0  # no stop here
    assert epochs_in(run) == [1, 2]
    metrics = run / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))  # header + 1
    assert epochs_in(run) == [1]
    resume_until(run, 2, env)
    assert epochs_in(run) == [1, 2]
