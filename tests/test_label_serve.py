"""catnet label as a running server: where it listens, that an acknowledged answer survives a
kill, and Teach (a new run folder, the starting checkpoint untouched, the queue re-ranked)."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import TrainedRun, make_dataset, write_class

from catnet.config import LabelConfig
from catnet.labelling.server import bind

TOKEN = "t"
HEAD = {"x-catnet-token": TOKEN}


def labelled_dir(tmp_path: Path) -> Path:
    data = make_dataset(tmp_path / "data", n_per_class=6)
    write_class(data / "unlabeled", "cats", 3, 24, start=100)
    write_class(data / "unlabeled", "dogs", 3, 24, start=100)
    return data


def start(*args: str | Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "catnet", "label", *map(str, args), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    return proc, url


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_binds_to_this_machine_only_by_default() -> None:
    sock = bind(LabelConfig().host, 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


@pytest.mark.slow  # `catnet label` processes
def test_cli_prints_the_url_and_warns_for_every_interface(tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    proc, url = start(data)
    err = stop(proc)
    assert url.startswith("http://127.0.0.1:") and "?token=" in url and len(url) > 40, (url, err)
    assert "warning" not in err
    proc, url = start(data, "--host", "0.0.0.0")
    err = stop(proc)
    assert "?token=" in url and "warning" in err and "0.0.0.0" in err, err


@pytest.mark.slow  # a `catnet label` process, killed
def test_an_acknowledged_answer_survives_a_kill(tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    proc, url = start(data)
    try:
        base, token = url.split("/?token=")
        r = httpx.post(f"{base}/api/label", json={"path": "dogs_101.png", "label": "not_cat"},
                       headers={"X-Catnet-Token": token}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        stop(proc, signal.SIGKILL)  # no clean shutdown at all
    assert (data / "not_cat" / "dogs_101.png").is_file()
    assert not (data / "unlabeled" / "dogs_101.png").exists()
    with (data / ".catnet" / "corrections.csv").open(newline="") as fh:
        assert [r["new_label"] for r in csv.DictReader(fh)] == ["not_cat"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_teach_writes_a_new_run_and_reranks(trained: TrainedRun, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from catnet.labelling.app import create_app
    from catnet.labelling.session import open_session

    data = labelled_dir(tmp_path)
    start_ckpt = tmp_path / "start.pt"
    start_ckpt.write_bytes(trained.best.read_bytes())
    before = digest(start_ckpt)
    session = open_session(data, LabelConfig(epochs=1), start_ckpt)
    client = TestClient(create_app(session, "t", "127.0.0.1", 1), base_url="http://127.0.0.1:1")
    head = {"x-catnet-token": "t"}
    client.post("/api/label", json={"path": "cats_100.png", "label": "cat"}, headers=head)
    assert client.post("/api/teach", headers=head).json() == {"started": True}
    assert client.post("/api/teach", headers=head).status_code == 409  # one at a time
    end = time.monotonic() + 300
    while (state := client.get("/api/state", headers=head).json())["job"]["running"]:
        assert time.monotonic() < end
        time.sleep(0.5)
    assert state["job"]["phase"] == "done", state
    teach = state["last_teach"]
    assert Path(teach["run_dir"]).parent == data / ".catnet" / "runs"
    assert Path(teach["model"]).is_file() and teach["started_from"] == str(start_ckpt)
    assert 0 <= teach["before_acc"] <= 1 and 0 <= teach["after_acc"] <= 1
    assert teach["val_pictures"] > 0
    assert digest(start_ckpt) == before  # never overwritten
    assert teach["model"] in state["model"] and state["ranked"]
    queue = client.get("/api/queue?kind=label", headers=head).json()
    assert queue["order"] == "least sure first" and all(i["p_cat"] is not None
                                                         for i in queue["items"])  # fmt: skip


@pytest.mark.slow
def test_first_teach_without_a_model(tmp_path: Path) -> None:
    from catnet.labelling.session import open_session

    data = labelled_dir(tmp_path)
    cfg = LabelConfig(first_epochs=1, out=str(tmp_path / "runs"))
    session = open_session(data, cfg, None)
    assert session.label_queue(10)["order"] == "random"
    session.teach_now()
    assert session.model is not None and session.last_teach["before_acc"] is None
    assert Path(session.last_teach["run_dir"]).parent == tmp_path / "runs"
    assert session.label_queue(10)["order"] == "least sure first"


def test_heatmaps_appear_only_where_the_model_can_explain(
    trained: TrainedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import numpy as np
    from PIL import Image
    from starlette.testclient import TestClient

    from catnet.labelling import pictures
    from catnet.labelling.app import create_app
    from catnet.labelling.session import open_session

    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), None)  # no model yet: nothing to explain with
    client = TestClient(create_app(session, TOKEN, "127.0.0.1", 1), base_url="http://127.0.0.1:1")
    pic = {"root": "data", "path": "cats/cats_0.png", "token": TOKEN}
    assert client.get("/api/state", headers=HEAD).json()["heatmaps"] is False
    assert client.get("/api/heatmap", params=pic).status_code == 404

    def explain(model: object, images: list, longest: int) -> list[np.ndarray]:
        """Stands in for explain_images: a ramp over each picture (a file, or an upload)."""
        sizes = [Image.open(i).size if isinstance(i, Path) else i.size for i in images]
        return [np.linspace(0, 1, w * h).reshape(h, w) for w, h in sizes]

    monkeypatch.setattr(pictures, "explain_images", explain)
    session = open_session(data, LabelConfig(), trained.best)
    client = TestClient(create_app(session, TOKEN, "127.0.0.1", 1), base_url="http://127.0.0.1:1")
    assert client.get("/api/state", headers=HEAD).json()["heatmaps"] is True
    r = client.get("/api/heatmap", params=pic)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(r.content))
    assert overlay.mode == "RGBA" and overlay.size == (24, 24)
    alpha = np.asarray(overlay)[..., 3]
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 200  # cold is see-through, hot is not
    tried = client.post("/api/try", content=(data / "dogs" / "dogs_0.png").read_bytes(),
                        headers=HEAD).json()  # fmt: skip
    assert tried["heatmap"].startswith("data:image/png;base64,")
