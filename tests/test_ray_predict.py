"""`catnet predict` on Ray Data (catnet.distributed): on a local Ray of 2 CPUs, over ~2,000
drawn pictures with unreadable ones and awkward names mixed in, the rows are `catnet predict`'s
rows; the driver does not hold the pictures; a missing Ray or a wrong address is a clear error.
The tests that need Ray skip without it (the extra: pip install "catnet[ray]")."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    REPO,
    OpenSetRun,
    TrainedRun,
    catnet_cli,
    catnet_process,
    make_dataset,
    prob_tol,
    run_benchmark,
    write_class,
)
from PIL import Image

from catnet.predicting.outputs import RowWriter

NO_RAY = "Ray Data is the optional extra: pip install 'catnet[ray]'"
# The names that break hand-made CSV and JSON: a comma, quotes, a newline, a semicolon, accents.
ODD_NAMES = ('comma, "quoted" név.png', "new\nline.png", "semi;colon 'single'.png")
FLOATS = ("p_cat", "threshold", "unfamiliar_score")
OBJECT_STORE_BYTES = 100 * 2**20  # Ray's minimum is 75 MB


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray on 2 CPUs and a small object store for the whole module (starting one
    takes seconds). Its workers inherit the environment of its start, before the per-test
    isolation: the session's caches (conftest.SESSION_CACHES), the engine's among them, where
    the graphs of the tests' checkpoints are."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    pytest.importorskip("ray.data", reason=NO_RAY)
    if ray.is_initialized():
        pytest.skip("a Ray runtime is already running in this process")
    context = ray.init(
        num_cpus=2,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        include_dashboard=False,
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 tiny drawn pictures (PNG and JPEG), 3 with awkward names, 4 unreadable ones."""
    root = tmp_path_factory.mktemp("ray-pictures")
    write_class(root / "cats", "cats", 600, 24)
    write_class(root / "cats", "cats", 400, 24, fmt="jpg", start=600)
    write_class(root / "other", "dogs", 993, 24)
    for i, name in enumerate(ODD_NAMES):
        Image.open(root / "cats" / f"cats_{i}.png").save(root / "other" / name)
    (root / "other" / "empty.png").write_bytes(b"")
    (root / "other" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "cats" / "truncated.jpg").write_bytes(
        (root / "cats" / "cats_600.jpg").read_bytes()[:200]
    )
    (root / "cats" / "random.png").write_bytes(os.urandom(3000))
    not_utf8(root).parent.mkdir()
    Image.open(root / "cats" / "cats_5.png").save(not_utf8(root))
    return root


def not_utf8(pictures: Path) -> Path:
    """A picture whose name is not UTF-8 (Latin-1 "café"), in a folder of its own beside the
    pictures (Arrow's strings cannot hold its name; read_binary_files does not see it)."""
    return pictures.parent / "odd-bytes" / os.fsdecode(b"caf\xe9.png")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV or JSONL output, values as JSON would have them."""
    if path.suffix == ".jsonl":
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        return [json.loads(line) for line in text.splitlines()]
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in FLOATS:
            row[key] = float(row[key]) if row[key] else None
        row["unfamiliar"] = {"true": True, "false": False, "": None}[row["unfamiliar"]]
    return rows


def assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The same paths in the same order, equal strings, floats within rounding."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert list(a) == list(b) == list(RowWriter.COLUMNS)
        for key in RowWriter.COLUMNS:
            if key in FLOATS and a[key] is not None and b[key] is not None:
                assert a[key] == pytest.approx(b[key], abs=prob_tol()), (a, b)
            else:
                assert a[key] == b[key], (key, a, b)


@pytest.fixture(scope="module")
def reference(
    trained: TrainedRun, pictures: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Today's `catnet predict` over the pictures (and a missing file) as CSV: the reference.
    In this process, decoding in it too (--workers 1): this process may hold the module's Ray,
    and forking decode workers beside Ray's threads is unsafe. The rows do not depend on the
    number of workers (test_evaluate_predict.py)."""
    out = tmp_path_factory.mktemp("ray-ref") / "rows.csv"
    extra = (pictures / "missing.png", not_utf8(pictures).parent)
    result = catnet_cli("predict", trained.best, pictures, *extra, "-o", out, "--workers", "1")
    assert result.returncode == 1, result.stderr  # some files are unreadable
    return out


@pytest.mark.slow
def test_cli_ray_writes_predicts_rows(
    ray_address: str, trained: TrainedRun, pictures: Path, reference: Path, tmp_path: Path
) -> None:
    """In this process, which holds the module's Ray (a fresh process joining a Ray by its
    address: test_cli_ray_options_match_predict_as_jsonl)."""
    out = tmp_path / "ray.csv"
    result = catnet_cli(
        "predict", trained.best, pictures, pictures / "missing.png", not_utf8(pictures).parent,
        "-o", out, "--ray", ray_address,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # exit 1: some inputs unreadable, as predict
    rows = read_rows(out)
    assert_same_rows(rows, read_rows(reference))
    assert len(rows) == 2002
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["label"] == "error"}
    assert set(errors) == {"empty.png", "text.jpg", "truncated.jpg", "random.png", "missing.png"}
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert {Path(r["path"]).name for r in rows} >= set(ODD_NAMES)
    assert "2002 pictures" in result.stderr
    assert rows[-1]["path"] == str(not_utf8(pictures)) and rows[-1]["label"] != "error"


@pytest.mark.slow
def test_cli_ray_options_match_predict_as_jsonl(
    ray_address: str, trained: TrainedRun, pictures: Path, tmp_path: Path
) -> None:
    """TTA, a threshold, an unsure range and the open-set check off: the same rows either way."""
    files = [pictures / "other" / name for name in (*ODD_NAMES, "empty.png")]
    files += sorted((pictures / "cats").glob("cats_1*.png"))
    options = ["--tta", "--threshold", "0.3", "--unsure", "0.45,0.55", "--no-open-set"]
    ref, ray = tmp_path / "ref.jsonl", tmp_path / "ray.jsonl"
    mine = catnet_cli("predict", trained.best, *files, "-o", ref, *options, "--workers", "1")
    assert mine.returncode == 1, mine.stderr
    result = catnet_process(
        "predict", trained.best, *files, "-o", ray, *options, "--ray", ray_address
    )
    assert result.returncode == 1, result.stderr
    rows = read_rows(ray)
    assert_same_rows(rows, read_rows(ref))
    assert {r["threshold"] for r in rows} == {0.3}
    assert {r["unfamiliar"] for r in rows} == {None}


@pytest.mark.slow
def test_predict_dataset_from_file_bytes(
    ray_address: str, trained: TrainedRun, pictures: Path, reference: Path
) -> None:
    """The Python API on ray.data.read_binary_files: Ray reads the files, the workers decode
    the bytes; the rows (in Ray's order) are predict's."""
    import ray.data

    from catnet.distributed import predict_dataset

    source = ray.data.read_binary_files(str(pictures), include_paths=True)
    rows = predict_dataset(trained.best, source).take_all()
    want = {r["path"]: r for r in read_rows(reference)}
    got = {str(Path(r["path"])): r for r in rows}
    assert len(got) == len(rows) == 2000
    for path, row in got.items():
        assert_same_rows([row], [want[path]])


@pytest.mark.slow
def test_streams_more_pictures_than_the_object_store_holds(
    ray_address: str, trained: TrainedRun, tmp_path: Path
) -> None:
    """120 MB of pictures through read_binary_files and a 100 MB object store (the module's
    Ray): the job streams, a few files per batch, and the rows carry none of the pictures'
    bytes or pixels. A stage that gathered more files per batch than the store's budget lets in
    would wait forever: a watchdog turns that into a failure."""
    import ray.data

    from catnet.distributed import predict_dataset

    rng = np.random.default_rng(0)
    for i in range(40):  # uncompressed noise: 3 MB each, on disk and in Ray's object store
        pixels = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"noise_{i}.png", compress_level=0)
    total = sum(p.stat().st_size for p in tmp_path.glob("*.png"))
    assert total > OBJECT_STORE_BYTES
    source = ray.data.read_binary_files(str(tmp_path), include_paths=True)
    rows = predict_dataset(trained.best, source)
    seen: list[Any] = []

    def consume() -> None:
        try:
            for batch in rows.iter_batches(batch_format="pyarrow", batch_size=8):
                seen.append((batch.column_names, batch.num_rows))
        except BaseException as exc:  # handed to the test below
            seen.append(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), f"the job stalled after {len(seen)} batches"
    assert not [x for x in seen if isinstance(x, BaseException)], seen
    assert {tuple(names) for names, _ in seen} == {RowWriter.COLUMNS}
    assert sum(n for _, n in seen) == 40


@pytest.mark.slow
def test_ray_gives_each_picture_the_answer_every_other_path_gives(
    ray_address: str, openset_run: OpenSetRun, tmp_path: Path
) -> None:
    """The Ray leg of test_decision.py::test_every_path_gives_the_same_answer, on the module's
    Ray (another Ray costs seconds to start): held-out cats and never-seen kinds get predict's
    label, p(cat) and unfamiliar flag, the pictures the check turns away included."""
    import ray.data
    from test_decision import answer_tol, answers_by_name, every_kind, predicted, same_answers

    from catnet.config import PredictConfig
    from catnet.distributed.ray_predict import predict_dataset
    from catnet.predicting.prediction import load_model

    checkpoint, folder = every_kind(openset_run, tmp_path)
    expected = predicted(load_model(checkpoint, device="cpu"), folder)
    assert any(flag for _, _, flag in expected.values())
    source = ray.data.from_items([{"path": str(p)} for p in sorted(folder.rglob("*.png"))])
    rows = predict_dataset(checkpoint, source, PredictConfig(workers=1)).take_all()
    found = answers_by_name([(r["path"], r["label"], r["p_cat"], r["unfamiliar"]) for r in rows])
    same_answers(found, expected, answer_tol(), "ray")


@pytest.mark.slow
def test_ray_predict_benchmark_prints_both_ratios(
    ray_address: str, trained: TrainedRun, tmp_path: Path
) -> None:
    """scripts/benchmark_ray_predict.py against the module's Ray (--ray: no second Ray), in
    this process (run_benchmark): its `catnet predict --ray` commands join the Ray this process
    holds."""
    data = make_dataset(tmp_path / "pics", n_per_class=20, size=40, fmt="jpg")
    out = run_benchmark("benchmark_ray_predict.py", "--data", data, "--checkpoint", trained.best,
                        "--skip-local", "--ray", ray_address)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"best\.pt\s+\d+\.\d\s+\d+\.\d\s+\d+\.\d\d .*same labels", out.stdout), (
        out.stdout
    )
    # start-up costs taken out: on 40 pictures the difference may even come out negative
    assert re.search(r"marginal.*\s+-?\d+\.\d\s+-?\d+\.\d\s+-?\d+\.\d\d$", out.stdout, re.M), (
        out.stdout
    )


def test_missing_ray_is_a_usage_error_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the extra: exit 2 and `pip install "catnet[ray]"`, no traceback. (None in
    sys.modules makes `import ray` raise ImportError, as a missing package does.)"""
    monkeypatch.setitem(sys.modules, "ray", None)
    write_class(tmp_path / "pics", "cats", 2, 24)
    result = catnet_cli("predict", tmp_path / "x.pt", tmp_path / "pics", "--ray", "auto")
    assert result.returncode == 2, result.stderr
    assert 'pip install "catnet[ray]"' in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a process, so that a hang fails at the timeout instead of blocking the suite
@pytest.mark.parametrize(
    ("address", "message"),
    [("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1"), ("nowhere", "--ray takes")],
)
def test_bad_address_is_a_clear_error_not_a_hang(
    address: str, message: str, tmp_path: Path
) -> None:
    pytest.importorskip("ray.data", reason=NO_RAY)
    write_class(tmp_path / "pics", "cats", 2, 24)
    result = catnet_process(
        "predict", tmp_path / "x.pt", tmp_path / "pics", "--ray", address, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_non_utf8_name_on_the_command_line_is_a_clear_error(
    ray_address: str, trained: TrainedRun, pictures: Path
) -> None:
    """Ray cannot start from such a command line (its folder works: see above)."""
    result = catnet_process("predict", trained.best, not_utf8(pictures), "--ray", ray_address)
    assert result.returncode == 2, result.stderr
    assert "give the folder that holds it" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a fresh interpreter
def test_the_core_install_does_not_import_ray() -> None:
    """Ray is an extra: catnet, its predict command and catnet.distributed import without it."""
    code = (
        "import sys, catnet, catnet.distributed, catnet.cli.predict_view, catnet.cli.commands; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in core["dependencies"] if d.startswith("ray")]
    assert core["optional-dependencies"]["ray"] == ["ray[data]>=2.9"]
