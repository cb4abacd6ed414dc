"""predict starts decoding before torch loads, at a size read from the checkpoint without
unpickling; a wrong or missing size costs time, never a different answer."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import TrainedRun, write_class

from catnet.config import PredictConfig
from catnet.data.decoding import Decoder, _decode_task
from catnet.data.folders import list_files
from catnet.predicting import readahead
from catnet.predicting.outputs import Prediction
from catnet.predicting.prediction import load_model, predict
from catnet.predicting.readahead import DecodeAhead, peek_decode_size, start_early
from catnet.runtime import cpuload
from catnet.runtime.workers import cpu_workers


def test_peek_reads_the_decode_size_of_a_real_checkpoint(trained: TrainedRun) -> None:
    assert peek_decode_size(trained.best) == load_model(trained.best).decode_size


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04garbage"])
def test_peek_gives_no_hint_for_junk(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    assert peek_decode_size(path) is None
    assert peek_decode_size(tmp_path / "missing.pt") is None


def test_peek_gives_no_hint_for_a_zip_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04K\x07.")  # pickle of the int 7
    assert peek_decode_size(path) is None


def rows(trained: TrainedRun, reader: DecodeAhead | None) -> list[tuple[str, str, float | None]]:
    out: list[Prediction] = []
    predict(trained.best, [str(trained.data)], on_row=out.append, reader=reader)
    return [(r.path, r.label, None if r.p_cat is None else round(r.p_cat, 5)) for r in out]


def test_a_wrong_size_guess_is_decoded_again(trained: TrainedRun) -> None:
    size = load_model(trained.best).decode_size
    cfg = PredictConfig(batch_size=4)  # windows of 256: one window, decoded twice
    wrong = DecodeAhead([str(trained.data)], size + 8, cfg)
    assert rows(trained, wrong) == rows(trained, None)


def test_an_early_start_gives_the_same_rows(trained: TrainedRun) -> None:
    early = start_early(trained.best, [str(trained.data)], PredictConfig(), set())
    assert early is not None
    assert rows(trained, early) == rows(trained, None)


def small_pictures(folder: Path, n: int = 40) -> list[Path]:
    """n tiny pictures (40: more than the 32 below which a window is decoded in-process),
    the fourth of them corrupt."""
    write_class(folder, "cats", n, 10)
    paths = list_files(folder)
    paths[3].write_bytes(b"not a picture")
    return paths


@pytest.mark.parametrize("workers", [2, 3])
def test_a_lead_starts_alone_and_the_rest_on_release(tmp_path: Path, workers: int) -> None:
    # predict's first window while torch imports: a lead on one worker fewer, the rest held
    paths = small_pictures(tmp_path)
    with Decoder(8, 10**8, workers) as decoder:
        job = decoder.submit(paths, lead=10)
        cores = cpu_workers()
        spread = workers if workers < cores else cores - 1
        assert sum(len(chunk) for chunk in job.held) == (30 if spread else 0)
        if spread:
            assert len(job.futures) == spread  # the lead, one chunk per worker
        led = job()
        assert job.held == []
        usual = decoder.submit(paths)()
    assert led == usual == [_decode_task((str(p), 8, 10**8)) for p in paths]
    assert led[3].pixels is None and led[3].reason.startswith("not a picture")
    assert all(r.pixels is not None for i, r in enumerate(led) if i != 3)


def test_the_lead_is_about_a_second_of_jpeg_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = small_pictures(tmp_path, 4)
    sizes = [p.stat().st_size for p in paths]
    monkeypatch.setattr(readahead, "LEAD_BYTES", sizes[0] + sizes[1])
    assert readahead._lead_files(paths) == 3  # the file that crosses the budget is in
    monkeypatch.setattr(readahead, "LEAD_BYTES", 10**9)
    assert readahead._lead_files([*paths, tmp_path / "missing.jpg"]) == 5


def test_the_early_reader_counts_its_workers_then_forgets_them(trained: TrainedRun) -> None:
    early = start_early(trained.best, [str(trained.data)], PredictConfig(), set())
    assert early is not None
    pids = early.decoder.pids
    assert len(pids) == early.decoder.n_workers or early.decoder.n_workers == 1
    assert set(pids) <= set(cpuload._helpers)
    early.close()
    assert not set(pids) & set(cpuload._helpers)
