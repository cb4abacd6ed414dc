"""When the machine fails under catnet: a full disk, a read-only folder, a refused permission.
Every command that writes says in one line what it was writing, where and why, exits 1 (2 before
any work), keeps the previous complete file and leaves no temp file; the cache is skipped, not
required. Faults are injected into `catnet` commands run in-process (open/os.replace/os.mkdir
raising OSError), and made for real on a small tmpfs where this machine lets us mount one."""

from __future__ import annotations

import builtins
import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import torch
from conftest import TrainedRun, catnet_cli, make_dataset, write_class

from catnet.data.pixels import decode_square
from catnet.errors import WRITE_REASONS, Stopped, WriteFailed, disk_error, write_failed
from catnet.models.checkpoint import load_checkpoint, save_checkpoint
from catnet.runtime.files import atomic_write

WORDS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}
TINY = ["--width", "8", "--depth", "2", "--image-size", "24", "--batch-size", "8"]


@contextlib.contextmanager
def refusing_writes(needle: str, code: int) -> Iterator[None]:
    """A disk that refuses to write any path containing `needle`, with errno `code`: what a full
    disk, a read-only mount or a missing permission does to open(..., "w"), os.replace, os.rename
    and os.mkdir (pathlib's methods call these too)."""

    def refuse(path: object) -> None:
        if isinstance(path, (str, bytes, os.PathLike)) and needle in os.fsdecode(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))

    real_open = io.open

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def refusing(real: Callable[..., Any], target: int) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            refuse(args[target])
            return real(*args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", faulty_open)
        mp.setattr(io, "open", faulty_open)
        mp.setattr(os, "replace", refusing(os.replace, 1))
        mp.setattr(os, "rename", refusing(os.rename, 1))
        mp.setattr(os, "mkdir", refusing(os.mkdir, 0))
        yield


def faulty_cli(needle: str, code: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`catnet ARGS` (in-process) on a disk that refuses to write paths containing `needle`."""
    with refusing_writes(needle, code):
        return catnet_cli(*args)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """No traceback; exactly one `error:` line, naming every word; returns that line."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ---- the one rule, as a function --------------------------------------------------------------


@pytest.mark.parametrize("code", [*WORDS, errno.EPERM, errno.EDQUOT])
def test_each_refusal_has_its_words(code: int) -> None:
    failed = write_failed(OSError(code, os.strerror(code)), "the checkpoint", "/x/best.pt")
    assert isinstance(failed, WriteFailed) and failed.exit_code == 1
    assert failed.message == f"could not write the checkpoint to /x/best.pt: {WRITE_REASONS[code]}"
    assert write_failed(OSError(errno.ENOENT, "gone"), "x", "/x") is None  # not the machine's


def test_the_oserror_behind_torchs_runtime_error_is_found() -> None:
    """torch.save on a full disk raises RuntimeError("unexpected pos ..."); the OSError is its
    __context__."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672]")  # noqa: B904
    except RuntimeError as exc:
        found = disk_error(exc)
    assert found is not None and found.errno == errno.ENOSPC
    assert disk_error(RuntimeError("CUDA out of memory")) is None


@pytest.mark.parametrize("code", list(WORDS))
def test_a_refused_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: TrainedRun, code: int
) -> None:
    path = tmp_path / "best.pt"
    shutil.copy(trained.best, path)
    before = path.read_bytes()
    payload = load_checkpoint(path)
    real_save = torch.save

    def full_disk(obj: object, fh: object) -> None:  # writes half, then the disk refuses
        real_save(obj, fh)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteFailed, match=WORDS[code]):
        save_checkpoint(payload, path)
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_sigterm_during_a_write_waits_for_it(tmp_path: Path) -> None:
    """A stop signal that arrives mid-write is held until the file is complete, then raised."""

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum, "SIGTERM")

    def write(fh: BinaryIO) -> None:
        fh.write(b"first half, ")
        os.kill(os.getpid(), signal.SIGTERM)  # delivered now, to this (the main) thread
        fh.write(b"second half")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped) as stopped:
            atomic_write(tmp_path / "out.txt", write)
        assert stopped.value.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is stop  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "out.txt").read_bytes() == b"first half, second half"
    assert temp_files(tmp_path) == []


# ---- every command, in-process ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("code", list(WORDS))
def test_train_with_a_refused_checkpoint_says_so(tmp_path: Path, code: int) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8, size=24)
    run = tmp_path / "run"
    result = faulty_cli("last.pt", code, "train", data, "--out", run, "--epochs", "1",
                        *TINY)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the checkpoint to", "last.pt", WORDS[code])
    assert temp_files(run) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("needle", "words"),
    [
        ("metrics.csv", ["metrics.csv"]),
        ("curves.png", ["curves.png"]),
        ("config.toml", ["config.toml"]),
        ("best.pt", ["could not write the checkpoint to", "best.pt"]),
    ],
)
def test_train_with_a_refused_run_file_says_so(
    tmp_path: Path, needle: str, words: list[str]
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8, size=24)
    run = tmp_path / "run"
    result = faulty_cli(needle, errno.ENOSPC, "train", data, "--out", run,
                        "--epochs", "1", *TINY)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, *words, "no space left on device")
    assert temp_files(run) == []
    for name in ("best.pt", "last.pt"):  # whatever was written is complete
        if (run / name).exists():
            load_checkpoint(run / name)


@pytest.mark.slow
def test_finetune_with_a_refused_checkpoint_says_so(tmp_path: Path, trained: TrainedRun) -> None:
    run = tmp_path / "tuned"
    result = faulty_cli("last.pt", errno.EACCES, "finetune", trained.best,
                        trained.data, "--epochs", "1", "--out", run)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the checkpoint to", "permission denied")
    assert temp_files(run) == []


@pytest.mark.slow
def test_tune_with_refused_outputs_says_so(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=6, size=24)
    result = faulty_cli("tune.csv", errno.ENOSPC, "tune", data, "--model", "mlp",
                        "--time-budget", "1", "--out", tmp_path / "tune")  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write", "tune.csv", "no space left on device")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.slow
def test_an_out_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path, code: int) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=4, size=24)
    result = faulty_cli("new-run", code, "train", data, "--out", tmp_path / "new-run")
    assert result.returncode == 2
    assert_one_line_error(result, "could not write the run folder to", "new-run", WORDS[code])


@pytest.mark.slow
def test_an_unwritable_cache_is_skipped_not_required(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8, size=24)
    result = faulty_cli("pixels.u8", errno.ENOSPC, "train", data, "--out",
                        tmp_path / "run", "--epochs", "1", *TINY)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("cannot use the picture cache") == 1
    assert "no space left on device" in result.stderr and "decoding in memory" in result.stderr
    assert (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("code", list(WORDS))
@pytest.mark.slow
def test_predict_output_refused(tmp_path: Path, trained: TrainedRun, code: int) -> None:
    """Refused before the first row: a usage error (the full-disk-mid-run case is below)."""
    out = tmp_path / "rows.csv"
    result = faulty_cli("rows.csv", code, "predict", trained.best, trained.data,
                        "--output", out)  # fmt: skip
    assert result.returncode == 2
    assert_one_line_error(result, "could not write the predictions to", "rows.csv", WORDS[code])


@pytest.mark.slow
def test_predict_sort_into_refused(tmp_path: Path, trained: TrainedRun) -> None:
    dest = tmp_path / "sorted"
    result = faulty_cli("sorted", errno.EROFS, "predict", trained.best,
                        trained.data / "dogs", "--sort-into", dest)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the sorted pictures to", "read-only")


@pytest.mark.parametrize(
    ("needle", "args", "words"),
    [
        ("new.pt", ["--pick-threshold", "f1", "--output", "new.pt"], ["checkpoint", "new.pt"]),
        ("mistakes.csv", ["--report", "report"], ["mistakes.csv"]),
        ("index.html", ["--report", "report"], ["index.html"]),
    ],
)
@pytest.mark.slow
def test_evaluate_outputs_refused(
    tmp_path: Path, trained: TrainedRun, needle: str, args: list[str], words: list[str]
) -> None:
    result = faulty_cli(needle, errno.ENOSPC, "evaluate", trained.best, trained.data,
                        *args)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, *words, "no space left on device")
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_export_refused_keeps_the_previous_export(tmp_path: Path, trained: TrainedRun) -> None:
    out = tmp_path / "model.ts"
    out.write_bytes(b"the previous export")
    result = faulty_cli("model.ts", errno.ENOSPC, "export", trained.best,
                        "--format", "torchscript", "--output", out)  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the export to", "model.ts", "no space left")
    assert out.read_bytes() == b"the previous export"
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_correct_with_a_refused_log_moves_nothing(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=3, size=24)
    picture = data / "dogs" / "dogs_0.png"
    result = faulty_cli("corrections.csv", errno.ENOSPC, "correct", data, picture,
                        "--truth", "cat")  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the corrections log", "no space left")
    assert picture.exists()  # the move was undone: a correction is logged or not made
    assert sorted(p.name for p in (data / "cats").iterdir()) == [f"cats_{i}.png" for i in range(3)]


@pytest.mark.slow
def test_check_fix_with_a_refused_manifest_moves_nothing(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=3, size=24)
    broken = data / "cats" / "broken.jpg"
    broken.write_text("not a picture")
    result = faulty_cli("manifest.json", errno.ENOSPC, "check", data, "--fix")
    assert result.returncode == 1
    assert_one_line_error(result, "could not write the quarantine manifest", "no space left")
    assert broken.read_text() == "not a picture"  # back in place: --undo could not know of it


@pytest.mark.slow
def test_tune_out_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=4, size=24)
    result = faulty_cli("tune-out", errno.EROFS, "tune", data, "--out",
                        tmp_path / "tune-out")  # fmt: skip
    assert result.returncode == 2
    assert_one_line_error(result, "could not write the tune folder", "read-only file system")


# ---- for real, on a small tmpfs ----------------------------------------------------------------


def _mount(folder: Path, options: str) -> str:
    """'' when mounted, else why not."""
    if shutil.which("mount") is None:
        return "no mount command"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "" if done.returncode == 0 else (done.stderr.strip() or f"mount exit {done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs root, or a container that allows mounts; skipped otherwise)."""
    disk = tmp_path / "disk"
    why = _mount(disk, "size=3m")
    if why:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but about `leave` bytes of the disk with one file."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_real_full_disk_checkpoint(small_disk: Path, trained: TrainedRun) -> None:
    """torch.save itself hits the full disk (its RuntimeError hides the OSError)."""
    path = small_disk / "best.pt"
    shutil.copy(trained.best, path)
    before = path.read_bytes()
    fill(small_disk, 4096)
    with pytest.raises(WriteFailed, match="no space left on device"):
        save_checkpoint(load_checkpoint(path), path)
    assert path.read_bytes() == before
    assert temp_files(small_disk) == []


@pytest.mark.slow
def test_real_full_disk_train_and_cache(tmp_path: Path, small_disk: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=8, size=24)
    fill(small_disk, 8192)
    env_cache = small_disk / "cache"
    result = catnet_cli_env({"CATNET_CACHE": str(env_cache)}, "train", data, "--out",
                            small_disk / "run", "--epochs", "1", *TINY)  # fmt: skip
    assert result.returncode == 1
    assert "cannot use the picture cache" in result.stderr  # the cache was skipped first
    assert_one_line_error(result, "could not write", "no space left on device")
    assert temp_files(small_disk) == []


def catnet_cli_env(extra: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in extra.items():
            mp.setenv(name, value)
        return catnet_cli(*args)


@pytest.mark.slow
def test_real_full_disk_predict_then_skip_done(
    tmp_path: Path, small_disk: Path, trained: TrainedRun
) -> None:
    pictures = tmp_path / "pictures"
    write_class(pictures, "cats", 60, 24)
    write_class(pictures, "dogs", 60, 24)
    out = small_disk / "rows.csv"
    filler = fill(small_disk, 6000)  # room for a few dozen rows of ~150 bytes
    first = catnet_cli("predict", trained.best, pictures, "--output", out)
    assert first.returncode == 1
    assert_one_line_error(first, "could not write the predictions to", "no space left")
    assert "--skip-done" in first.stderr  # the hint says how to finish
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 0 < len(rows) < 120 and all(r["label"] in ("cat", "not_cat") for r in rows)
    assert out.read_bytes().endswith(b"\r\n")  # no half row
    filler.unlink()
    second = catnet_cli("predict", trained.best, pictures, "--output", out, "--skip-done")
    assert second.returncode == 0, second.stderr[-2000:]
    with out.open(newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    assert len(paths) == len(set(paths)) == 120


@pytest.mark.slow
def test_real_read_only_disk(tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    why = _mount(disk, "size=1m,ro")
    if why:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    try:
        data = make_dataset(tmp_path / "data", n_per_class=4, size=24)
        result = catnet_cli("train", data, "--out", disk / "run")
        assert result.returncode == 2
        assert_one_line_error(result, "could not write the run folder to", "read-only file system")
        # A read-only cache folder: said once, and the training goes on without it.
        cached = catnet_cli_env({"CATNET_CACHE": str(disk / "cache")}, "train", data, "--out",
                                tmp_path / "run", "--epochs", "1", *TINY)  # fmt: skip
        assert cached.returncode == 0, cached.stderr[-2000:]
        assert cached.stderr.count("cannot use the picture cache") == 1
        assert "read-only file system" in cached.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---- two processes, one cache and one folder ---------------------------------------------------


def _start(log: Path, *args: str | Path) -> subprocess.Popen[bytes]:
    """`catnet ARGS` in the background, its output to a file (a pipe nobody reads could fill)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "catnet", *map(str, args)], stdout=out, stderr=out
        )


def assert_cache_consistent(cache_root: Path) -> int:
    """Read the cache back entry by entry: every slot holds exactly what a fresh decode of its
    file gives, no two entries share a slot, and the pixel file is as long as the index says.
    Returns the number of pictures checked."""
    checked = 0
    for folder in sorted(cache_root.glob("v*-s*")):
        index = json.loads((folder / "index.json").read_text())
        size, n_slots = index["size"], index["n_slots"]
        assert (folder / "pixels.u8").stat().st_size == n_slots * size * size * 3
        pixels = np.fromfile(folder / "pixels.u8", dtype=np.uint8).reshape(n_slots, size, size, 3)
        slots = [v for v in index["entries"].values() if isinstance(v, int)]
        assert len(slots) == len(set(slots))
        for key, slot in index["entries"].items():
            if isinstance(slot, int):
                path = key.rsplit("|", 2)[0]
                assert np.array_equal(pixels[slot], decode_square(path, size)), path
                checked += 1
    return checked


@pytest.mark.slow
def test_two_trainings_and_a_predict_share_one_cache_and_one_folder(
    tmp_path: Path, trained: TrainedRun
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=24, size=24)
    (data / "cats" / "broken.jpg").write_text("not a picture")
    train = ("train", data, "--epochs", "2", *TINY)
    logs = [tmp_path / f"log{i}.txt" for i in range(3)]
    runs = [
        _start(logs[0], *train, "--out", tmp_path / "run1"),
        _start(logs[1], *train, "--out", tmp_path / "run2"),
        _start(logs[2], "predict", trained.best, data, "--output", tmp_path / "rows.csv"),
    ]
    codes = [proc.wait(timeout=600) for proc in runs]
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [1, 1, 1], outputs  # 1: each job met broken.jpg and finished, as it should
    assert all("Traceback" not in text for text in outputs)
    for run in ("run1", "run2"):
        load_checkpoint(tmp_path / run / "best.pt")
    with (tmp_path / "rows.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 49
    assert assert_cache_consistent(Path(os.environ["CATNET_CACHE"])) == 48


def test_real_full_disk_cache_falls_back_and_stays_consistent(
    tmp_path: Path, small_disk: Path
) -> None:
    from catnet.data.cache import load_pixels

    pictures = tmp_path / "pictures"
    write_class(pictures, "cats", 40, 24)
    paths = sorted(pictures.iterdir())
    cache_root, size = small_disk / "cache", 28
    load_pixels(paths[:10], size, cache_root=cache_root, workers=1)
    pixel_file = next(cache_root.glob("v*-s28")) / "pixels.u8"
    assert pixel_file.stat().st_size == 10 * size * size * 3
    filler = fill(small_disk, 8192)  # room for about three more pictures, not thirty
    messages: list[str] = []
    table = load_pixels(paths, size, cache_root=cache_root, workers=1, on_message=messages.append)
    assert len(messages) == 1 and "no space left on device" in messages[0], messages
    assert table.ok.all()
    for i, path in enumerate(paths):  # decoded in memory, all of them right
        assert np.array_equal(table.array[table.slots[i]], decode_square(path, size))
    assert pixel_file.stat().st_size == 10 * size * size * 3  # the partial append was cut off
    assert temp_files(small_disk) == []
    filler.unlink()
    messages.clear()
    load_pixels(paths, size, cache_root=cache_root, workers=1, on_message=messages.append)
    assert messages == []
    assert assert_cache_consistent(cache_root) == 40
