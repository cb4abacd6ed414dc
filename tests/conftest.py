"""Shared fixtures: tiny picture folders drawn on the fly, an isolated cache, and one small model
trained once per session and reused by the evaluate / predict / checkpoint / API tests."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from catnet.config import TrainConfig
    from catnet.training.loop import TrainResult

REPO = Path(__file__).resolve().parents[1]
POSITIVE_WORDS = ("cat", "cats", "kitties", "kitty")


def prob_tol() -> float:
    """Tolerance for p(cat) computed in different batches: CPU kernels give the same numbers
    whatever the batch, GPU kernels (in bf16) may not."""
    import torch

    return 2e-2 if torch.cuda.is_available() else 1e-5


def draw_picture(kind: str, seed: int | str, size: int = 24) -> Image.Image:
    """A simple picture a tiny network can tell apart: cats are a bright disc with two triangle
    ears on a dark background; everything else is dark squares on a light background."""
    rng = random.Random(f"{kind}:{seed}")
    big = size * 2
    if kind.lower() in POSITIVE_WORDS:
        img = Image.new("RGB", (big, big), tuple(rng.randint(0, 60) for _ in range(3)))
        d = ImageDraw.Draw(img)
        r = big * rng.uniform(0.25, 0.33)
        cx, cy = big / 2 + rng.uniform(-2, 2), big * 0.58
        fur = (rng.randint(200, 255), rng.randint(150, 230), rng.randint(60, 140))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fur)
        for side in (-1, 1):
            x0 = cx + side * r * 0.9
            d.polygon([(x0, cy - r * 0.3), (cx + side * r * 0.2, cy - r * 0.6), (x0, cy - r * 1.5)],
                      fill=fur)  # fmt: skip
    else:
        img = Image.new("RGB", (big, big), tuple(rng.randint(190, 255) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(3):
            s = big * rng.uniform(0.15, 0.3)
            x, y = rng.uniform(0, big - s), rng.uniform(0, big - s)
            d.rectangle((x, y, x + s, y + s), fill=tuple(rng.randint(0, 80) for _ in range(3)))
    return img.resize((size, size), Image.Resampling.BILINEAR)


def write_class(
    folder: Path, kind: str, n: int, size: int, fmt: str = "png", start: int = 0
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        img = draw_picture(kind, i, size)
        if fmt == "jpg":
            img.save(folder / f"{kind}_{i}.jpg", "JPEG", quality=90)
        else:
            img.save(folder / f"{kind}_{i}.png", "PNG")


def make_dataset(
    root: Path,
    n_per_class: int = 12,
    size: int = 24,
    layout: str = "flat",
    classes: Sequence[str] = ("cats", "dogs"),
    splits: Sequence[str] = ("train", "val", "test"),
    fmt: str = "png",
) -> Path:
    """Write a labelled picture folder and return its root.

    layout="flat":  root/<class>/<class>_<i>.png, n_per_class each.
    layout="split": root/<split>/<class>/..., n_per_class per class in train, half as many
    (at least 2) in every other split; pass splits=("train", "validation") etc.
    """
    root = Path(root)
    if layout == "flat":
        for name in classes:
            write_class(root / name, name, n_per_class, size, fmt)
    elif layout == "split":
        start = 0
        for split in splits:
            n = n_per_class if split == "train" else max(2, n_per_class // 2)
            for name in classes:
                write_class(root / split / name, name, n, size, fmt, start=start)
            start += n  # different pictures in every split
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return root


@pytest.fixture(name="make_dataset")
def make_dataset_fixture() -> Callable[..., Path]:
    return make_dataset


def tiny_config(data: Path, out: Path, cache_dir: Path, **changes: Any) -> TrainConfig:
    """The smallest sensible training run: a 2-stage CNN of width 8 on 24 px pictures, in fp32
    (bf16 autocast on CPU is slower for networks this small)."""
    from catnet.config import TrainConfig

    values: dict[str, Any] = {
        "data": str(data),
        "out": str(out),
        "model": "cnn",
        "width": 8,
        "depth": 2,
        "image_size": 24,
        "epochs": 2,
        "batch_size": 16,
        "cache_dir": str(cache_dir),
        "precision": "fp32",
        "device": "cpu",
        "workers": 1,
    }
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture() -> Callable[..., TrainConfig]:
    return tiny_config


# This process's caches. Fixtures wider than one test (the session's trained model, a module's
# Ray and its workers) start before the per-test isolation below: they get these folders, so
# nothing a test runs writes to ~/.cache. The inference engine's graphs depend only on their
# key (a checkpoint's bytes): one folder for the session, so each model is converted once.
SESSION_CACHES = Path(tempfile.mkdtemp(prefix="catnet-tests-"))
ENGINE_CACHE = SESSION_CACHES / "engine"
os.environ.update(CATNET_CACHE=str(SESSION_CACHES / "cache"),
                  CATNET_ENGINE_CACHE=str(ENGINE_CACHE),
                  XDG_CACHE_HOME=str(SESSION_CACHES / "xdg"))  # fmt: skip
atexit.register(shutil.rmtree, SESSION_CACHES, True)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test (and every subprocess it starts) gets its own cache folder and working
    directory, so nothing is written to ~/.cache/catnet or ./runs."""
    monkeypatch.setenv("CATNET_CACHE", str(tmp_path / ".catnet_cache"))
    monkeypatch.setenv("CATNET_ENGINE_CACHE", str(ENGINE_CACHE))  # the session's (see above)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".xdg_cache"))
    monkeypatch.chdir(tmp_path)
    yield


# The files that take longest (tens of seconds each: Ray, torchrun, the benchmark scripts,
# real processes), longest first as measured: `-n 2 --dist loadfile` hands out whole files in
# this order (pytest_configure below), and a long file started last leaves one core idle while
# it finishes.
LONGEST_FIRST = ("test_ray_predict.py", "test_distributed_train.py", "test_bad_inputs.py",
                 "test_benchmarks.py", "test_faults.py", "test_interrupts.py",
                 "test_pretrained.py", "test_decisions.py", "test_docs.py",
                 "test_learning_loop.py", "test_label_serve.py", "test_vocabulary.py",
                 "test_label_browser.py", "test_demo.py", "test_decision.py")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's loadfile sorts files by their number of tests, most first, unless told
    not to: keep the order above instead (a file of many quick tests is not a long file)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """An xdist worker ends here without tearing torch, OpenVINO and Ray's client down (~1.5 s
    that the controller waits for, as catnet's own entry point skips it: cli/main.py's
    _exit). Its results went to the controller at session end (pytest_sessionfinish); only the
    session's caches are left to remove."""
    if hasattr(config, "workerinput"):  # an xdist worker (not a pytest that a test started)
        shutil.rmtree(SESSION_CACHES, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the session's trained model is slow: the training alone takes seconds
    (tens of seconds on a busy machine), and `pytest -m "not slow"` should not pay for it."""
    for item in items:
        if {"trained", "openset_run"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


NOT_SLOW = "but is not marked slow: add @pytest.mark.slow, or run the CLI in-process (catnet_cli)"


def _starts_python(args: Any) -> bool:
    """Whether a Popen command line starts a Python program (python, catnet, torchrun): a new
    interpreter that imports torch again, seconds each. Other programs (the `ldconfig` that
    ctypes.util.find_library runs, `mount`) take milliseconds and pass."""
    program = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    name = Path(os.fsdecode(program)).name
    return os.fsdecode(program) == sys.executable or name.startswith(("python", "catnet", "torch"))


@contextlib.contextmanager
def _refuse_slow_work(item: pytest.Item) -> Iterator[None]:
    """A test without the slow marker may neither start a Python process nor train (reach
    training.loop.run_epochs): either fails it at once, naming the test. Forked worker pools
    (milliseconds, no new interpreter) are allowed."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    import multiprocessing.util

    from catnet.training import loop

    def refuse(what: str) -> None:
        pytest.fail(f"{item.nodeid} {what} {NOT_SLOW}", pytrace=False)

    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def checked_child(popen: subprocess.Popen, args: Any, *more: Any, **kwargs: Any) -> Any:
        if _starts_python(args):
            refuse(f"starts a Python process ({args!r})")
        return execute_child(popen, args, *more, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", checked_child)
        # multiprocessing's spawn and forkserver start a new interpreter without Popen
        mp.setattr(multiprocessing.util, "spawnv_passfds", lambda *a: refuse("spawns a process"))
        mp.setattr(loop, "run_epochs", lambda *a, **k: refuse("trains"))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _refuse_slow_work(item):  # module fixtures that train are set up here
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _refuse_slow_work(item):
        return (yield)


@dataclass(frozen=True)
class TrainedRun:
    data: Path  # flat cats/ dogs/ folder, with one unreadable file in cats/
    broken: Path  # that unreadable file
    run_dir: Path
    best: Path
    last: Path
    cache_dir: Path
    config: TrainConfig
    result: TrainResult

    def copy_run(self, dest: Path) -> Path:
        """A private copy of the run folder, for tests that write to it (resume)."""
        shutil.copytree(self.run_dir, dest)
        return dest


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny CNN trained for 2 epochs, shared by the whole session. Treat it as read-only."""
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("trained")
    data = make_dataset(base / "data", n_per_class=12, size=24)
    broken = data / "cats" / "broken.jpg"
    broken.write_text("this is not a JPEG\n")
    cfg = tiny_config(data, base / "run", base / "cache")
    with single_thread():  # tests that retrain with the same seed expect the same weights
        result = train(dataclasses.replace(cfg))
    return TrainedRun(
        data=data,
        broken=broken,
        run_dir=result.run_dir,
        best=result.best_checkpoint,
        last=result.last_checkpoint,
        cache_dir=base / "cache",
        config=cfg,
        result=result,
    )


def catnet_cli(*args: str | Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`catnet ARGS` in this process, through Typer's CliRunner: the exit code, stdout and stderr
    that `python -m catnet` gives, without a new interpreter that imports torch again (about 2 s
    a call, once most of the suite's time). An exception that escapes a command shows in stderr
    as a traceback, as the real entry point prints it. Rich lays tables out for 80 columns, as in
    a pipe. Use catnet_process where the process is the point (signals, kills, the entry point)."""
    from typer.testing import CliRunner

    from catnet.cli import app

    result = CliRunner().invoke(
        app, [str(a) for a in args], input=input, env={"COLUMNS": "80", "LINES": "25"}
    )
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(
        ["catnet", *map(str, args)], result.exit_code, result.stdout, stderr
    )


def catnet_process(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m catnet ARGS` in a fresh interpreter (the autouse fixture has already put
    CATNET_CACHE and the working directory in a temporary folder). Without COLUMNS/LINES Rich
    lays tables out for 80 columns, as in a pipe. A test that calls it is slow."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [sys.executable, "-m", "catnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """The same numbers whatever else the machine is doing: catnet sizes its thread pool by the
    idle cores, and sums split over another number of threads round differently."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATNET_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """`single_thread` for every test of a module."""
    with single_thread():
        yield


ODD_NAME = 'odd, "quoted" név;.png'


@dataclass(frozen=True)
class OpenSetRun:
    best: Path
    new_cats: Path  # held-out pictures of the trained cats
    strange: Path  # uniform noise and the demo's cars, birds, houses, noise: never seen


@pytest.fixture(scope="session")
def openset_run(tmp_path_factory: pytest.TempPathFactory) -> OpenSetRun:
    """A tiny CNN trained on drawn cats against one kind of not-cat (dark squares), and
    pictures of kinds it never saw; its open-set check works (12 epochs: fewer leave the
    features too unformed for all noise to be unfamiliar). Shared by the open-set and labelling
    page tests; treat it as read-only."""
    import numpy as np

    from catnet.demo.synthetic import draw_image
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("openset")
    data = make_dataset(base / "data", n_per_class=40, size=24)
    with single_thread():
        result = train(tiny_config(data, base / "run", base / "cache", epochs=12))
    write_class(base / "new_cats", "cats", 12, 24, start=100)
    strange = base / "strange"
    strange.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(strange / f"uniform_{i}.png")
    for kind in ("cars", "birds", "houses", "noise"):
        for i in range(6):
            draw_image(kind, random.Random(f"open:{kind}:{i}"), 24).save(
                strange / f"{kind}_{i}.png"
            )
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(strange / ODD_NAME)
    return OpenSetRun(result.best_checkpoint, base / "new_cats", strange)


SCRIPTS = REPO / "scripts"


def run_benchmark(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """scripts/SCRIPT ARGS in this process, its `python -m catnet ...` commands through
    catnet_cli (benchmark_accuracy.run, which the accuracy, calibration, open-set and tiny-set
    scripts share): the same script and the same commands, without a new interpreter for each
    (2-3 s apiece). Returns the exit code and what the script printed."""
    import io
    import runpy
    import time

    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import benchmark_accuracy

    def run(cmd: list[str], env: dict | None = None, ok: tuple[int, ...] = (0, 1)
            ) -> tuple[str, float]:  # fmt: skip
        assert cmd[:3] == [sys.executable, "-m", "catnet"], cmd
        with pytest.MonkeyPatch.context() as mp:
            for key, value in (env or {}).items():
                if os.environ.get(key) != value:
                    mp.setenv(key, value)
            started = time.monotonic()
            proc = catnet_cli(*cmd[3:])
        if proc.returncode not in ok:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        return proc.stdout, time.monotonic() - started

    out, err = io.StringIO(), ""
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(benchmark_accuracy, "run", run)
        mp.setattr(sys, "argv", [script, *map(str, args)])
        try:
            runpy.run_path(str(SCRIPTS / script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            err = "" if isinstance(exc.code, int | None) else str(exc.code)
    return subprocess.CompletedProcess([script, *map(str, args)], code or 0, out.getvalue(), err)
