"""catnet label: the reserved unlabeled/ folder, the queues, and the web API's safety (token,
origin, paths, atomic and undoable moves, two tabs) through Starlette's TestClient."""

from __future__ import annotations

import csv
import json
import logging
import threading
from pathlib import Path

import pytest
from conftest import OpenSetRun, TrainedRun, catnet_cli, make_dataset, write_class

pytest.importorskip("httpx")
from starlette.testclient import TestClient

from catnet.config import LabelConfig
from catnet.labelling.app import create_app
from catnet.labelling.session import LabelSession, open_session
from catnet.scoring.decision import Decision

TOKEN = "test-token-123"
HEAD = {"x-catnet-token": TOKEN}
BASE = "http://127.0.0.1:8765"


def labelled_dir(tmp_path: Path) -> Path:
    data = make_dataset(tmp_path / "data", n_per_class=6)
    write_class(data / "unlabeled", "cats", 3, 24, start=100)
    write_class(data / "unlabeled", "dogs", 3, 24, start=100)
    return data


def client_for(session: LabelSession) -> TestClient:
    return TestClient(create_app(session, TOKEN, "127.0.0.1", 8765), base_url=BASE)


@pytest.fixture(name="setup")
def setup_fixture(tmp_path: Path) -> tuple[Path, LabelSession, TestClient]:
    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), None)
    return data, session, client_for(session)


def log_rows(data: Path, name: str = "corrections.csv") -> list[dict[str, str]]:
    path = data / ".catnet" / name
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- unlabeled/ is reserved -------------------------------------------------------------------


def test_unlabeled_folder_is_not_a_class(tmp_path: Path) -> None:
    from catnet.curation.corrections import correct
    from catnet.data.folders import scan_dataset

    data = labelled_dir(tmp_path)
    dataset = scan_dataset(data)
    assert dataset.classes == ["cats", "dogs"]
    assert not any("unlabeled" in s.path.parts for s in dataset.train + dataset.val)
    report = json.loads(catnet_cli("check", data, "--json").stdout)
    assert report["n_files"] == 12 and report["classes"] == ["cats", "dogs"]  # not unlabeled/
    # correct does not mistake the untagged copy for a tagged not-cat
    done = correct(data, [data / "unlabeled" / "cats_100.png"], "not_cat")
    assert done[0].old_label == "new" and done[0].dest.parent.name == "not_cat"
    assert (data / "unlabeled" / "cats_100.png").exists()  # correct copies; label moves


# --- queues --------------------------------------------------------------------------------


class Decided05:
    """A stand-in model whose decision is threshold 0.5, no temperature, no open-set check."""

    def decision(self) -> Decision:
        return Decision(0.5)


def test_least_sure_first_and_review_order(tmp_path: Path) -> None:
    from catnet.labelling.queue import (
        Tagged,
        answers_for,
        least_sure_first,
        random_order,
        review_order,
    )

    paths = [tmp_path / f"{i}.png" for i in range(5)]
    scores = {paths[0]: 0.9, paths[1]: 0.45, paths[2]: 0.05, paths[3]: 0.6}
    assert least_sure_first(paths, scores) == [paths[1], paths[3], paths[0], paths[2], paths[4]]
    # an unfamiliar picture counts as unsure whatever its p(cat): it comes first
    odd = least_sure_first(paths, scores, [paths[2], paths[0]])
    assert odd == [paths[0], paths[2], paths[1], paths[3], paths[4]]
    assert random_order(paths, 1) == random_order(list(reversed(paths)), 1)
    assert sorted(random_order(paths, 1)) == sorted(paths)
    tagged = [Tagged(paths[0], "not_cat"), Tagged(paths[1], "cat"), Tagged(paths[2], "cat"),
              Tagged(paths[3], "cat")]  # fmt: skip
    # the model's answers at threshold 0.5, as its decision gives them
    answers = answers_for(Decided05(), list(scores), scores, {})
    order = review_order(tagged, answers, 0.5)
    assert [t.path for t in order] == [paths[2], paths[0], paths[1]]  # most confident first
    assert review_order(tagged, answers, 0.5, {str(paths[2].resolve())})[0].path == paths[0]


def test_label_queue_is_ranked_by_the_model(trained: TrainedRun, tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), trained.best)
    session.rank()
    items = session.label_queue(100)["items"]
    ps = [it["p_cat"] for it in items]
    assert len(ps) == 6 and all(p is not None for p in ps)
    assert [abs(p - 0.5) for p in ps] == sorted(abs(p - 0.5) for p in ps)
    review = client_for(session).get("/api/queue?kind=review", headers=HEAD).json()
    for item in review["items"]:  # every one disputes its tag
        assert (item["p_cat"] >= session.model.threshold) != (item["tag"] == "cat")


def noise_to_label(run: OpenSetRun, data: Path) -> list[str]:
    """Copy the never-seen uniform-noise pictures into unlabeled/; their names."""
    names = [p.name for p in sorted(run.strange.iterdir()) if p.name.startswith("uniform_")]
    for name in names:
        (data / "unlabeled" / name).write_bytes((run.strange / name).read_bytes())
    return names


def test_the_page_flags_pictures_unlike_every_training_picture(
    openset_run: OpenSetRun, tmp_path: Path
) -> None:
    data = labelled_dir(tmp_path)
    noise = noise_to_label(openset_run, data)
    session = open_session(data, LabelConfig(), openset_run.best)
    client = client_for(session)
    before = client.get("/api/queue?kind=label", headers=HEAD).json()["items"]
    assert all(it["unfamiliar"] is None for it in before)  # not ranked yet: no score
    session.rank()
    items = client.get("/api/queue?kind=label", headers=HEAD).json()["items"]
    assert len(items) == 6 + len(noise)
    assert all(isinstance(it["unfamiliar"], bool) and it["unfamiliar_score"] >= 0 for it in items)
    flags = {it["name"]: it["unfamiliar"] for it in items}
    assert all(flags[name] for name in noise)
    limit = session.model.open_set.threshold
    assert all((it["unfamiliar_score"] > limit) == it["unfamiliar"] for it in items)
    # ranked least sure first, but an unfamiliar picture counts as unsure: those come first
    odd = [it["unfamiliar"] for it in items]
    assert odd == sorted(odd, reverse=True)
    rest = [abs(it["p_cat"] - 0.5) for it in items if not it["unfamiliar"]]
    assert rest == sorted(rest)
    review = client.get("/api/queue?kind=review", headers=HEAD).json()["items"]
    assert all(isinstance(it["unfamiliar"], bool) for it in review)
    tried = client.post("/api/try", content=(data / "unlabeled" / noise[0]).read_bytes(),
                        headers=HEAD).json()  # fmt: skip
    assert tried["unfamiliar"] is True and tried["label"] == "not_cat"
    assert tried["unfamiliar_score"] > limit


def test_a_checkpoint_without_the_check_gives_null(openset_run: OpenSetRun, tmp_path: Path) -> None:
    from catnet.models.checkpoint import load_checkpoint, save_checkpoint
    from catnet.scoring.openset import KEY

    payload = load_checkpoint(openset_run.best)
    del payload[KEY]  # what a checkpoint from before the check looks like
    old = save_checkpoint(payload, tmp_path / "old.pt")
    data = labelled_dir(tmp_path)
    noise = noise_to_label(openset_run, data)
    session = open_session(data, LabelConfig(), old)
    session.rank()
    client = client_for(session)
    items = client.get("/api/queue?kind=label", headers=HEAD).json()["items"]
    assert len(items) == 6 + len(noise) and all(it["p_cat"] is not None for it in items)
    assert all(it["unfamiliar"] is None and it["unfamiliar_score"] is None for it in items)
    ps = [abs(it["p_cat"] - 0.5) for it in items]
    assert ps == sorted(ps)  # plain least sure first
    tried = client.post("/api/try", content=(data / "unlabeled" / noise[0]).read_bytes(),
                        headers=HEAD).json()  # fmt: skip
    assert tried["unfamiliar"] is None and tried["unfamiliar_score"] is None


# --- token, origin, host --------------------------------------------------------------------


def test_every_request_needs_the_token(setup: tuple) -> None:
    _, _, client = setup
    pic = {"root": "unlabeled", "path": "cats_100.png"}
    assert client.get("/").status_code == 403
    assert client.get(f"/?token={TOKEN}").status_code == 200
    assert client.get("/api/state").status_code == 403
    assert client.get("/api/picture", params=pic).status_code == 403
    assert client.get("/api/picture", params={**pic, "token": "wrong"}).status_code == 403
    assert client.get("/api/picture", params={**pic, "token": TOKEN}).status_code == 200
    move = {"path": "cats_100.png", "label": "cat"}
    assert client.post("/api/label", json=move).status_code == 403
    # the query token opens pictures but never changes files: that needs the header
    assert client.post(f"/api/label?token={TOKEN}", json=move).status_code == 403
    assert client.post("/api/teach").status_code == 403


def test_another_site_cannot_move_files(setup: tuple) -> None:
    data, _, client = setup
    move = {"path": "cats_100.png", "label": "cat"}
    evil = {**HEAD, "origin": "http://evil.example"}
    assert client.post("/api/label", json=move, headers=evil).status_code == 403
    rebound = {**HEAD, "host": "evil.example:8765"}  # DNS rebinding onto 127.0.0.1
    assert client.post("/api/label", json=move, headers=rebound).status_code == 403
    assert (data / "unlabeled" / "cats_100.png").exists() and not log_rows(data)
    same = {**HEAD, "origin": BASE}
    assert client.post("/api/label", json=move, headers=same).status_code == 200


def test_only_pictures_inside_the_folders_are_served(
    setup: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, _, client = setup
    secret = tmp_path / "secret.png"
    secret.write_bytes((data / "cats" / "cats_0.png").read_bytes())
    (data / "cats" / "link.png").symlink_to(secret)
    (data / ".catnet").mkdir(exist_ok=True)
    (data / ".catnet" / "hidden.png").write_bytes(secret.read_bytes())
    tricks = [
        ("data", "../secret.png"), ("data", str(secret)), ("data", "cats/link.png"),
        ("data", "cats/../../secret.png"), ("data", ".catnet/hidden.png"),
        ("unlabeled", "../../secret.png"), ("elsewhere", "secret.png"), ("data", "cats"),
    ]  # fmt: skip
    caplog.set_level(logging.WARNING, logger="catnet.label")
    for root, path in tricks:
        r = client.get("/api/picture", params={"root": root, "path": path, "token": TOKEN})
        assert r.status_code in (403, 404), (root, path)
    raw = client.get(f"/api/picture?root=data&path=%2e%2e/secret.png&token={TOKEN}")
    assert raw.status_code in (403, 404)
    double = client.get(f"/api/picture?root=data&path=%252e%252e/secret.png&token={TOKEN}")
    assert double.status_code in (403, 404)
    assert sum("refused" in r.message for r in caplog.records) >= len(tricks) + 2
    ok = client.get("/api/picture", params={"root": "data", "path": "cats/cats_0.png",
                                            "token": TOKEN})  # fmt: skip
    assert ok.status_code == 200 and ok.content == (data / "cats" / "cats_0.png").read_bytes()


# --- moves -----------------------------------------------------------------------------------


def test_label_moves_logs_and_undo_restores_exactly(setup: tuple) -> None:
    data, _, client = setup
    before = (data / "unlabeled" / "dogs_100.png").read_bytes()
    (data / "not_cat").mkdir()
    (data / "not_cat" / "dogs_100.png").write_bytes(b"another picture, same name")
    r = client.post("/api/label", json={"path": "dogs_100.png", "label": "n"}, headers=HEAD)
    assert r.status_code == 200, r.text
    assert not (data / "unlabeled" / "dogs_100.png").exists()
    moved = data / "not_cat" / "dogs_100-1.png"  # never overwrites
    assert moved.read_bytes() == before
    assert (data / "not_cat" / "dogs_100.png").read_bytes() == b"another picture, same name"
    rows = log_rows(data)
    assert [(r["old_label"], r["new_label"], Path(r["dest"]).name) for r in rows] == [
        ("new", "not_cat", "dogs_100-1.png")
    ]
    undo = client.post("/api/undo", json={"action": r.json()["action"]}, headers=HEAD)
    assert undo.json()["restored"] == {"root": "unlabeled", "path": "dogs_100.png"}
    assert (data / "unlabeled" / "dogs_100.png").read_bytes() == before
    assert not moved.exists() and log_rows(data) == []
    again = client.post("/api/undo", json={"action": r.json()["action"]}, headers=HEAD)
    assert again.status_code == 409  # undone once, exactly


def test_two_tabs_cannot_move_a_picture_twice(setup: tuple) -> None:
    data, session, _ = setup
    tabs = [client_for(session), client_for(open_session(data, LabelConfig(), None))]
    answers: list[int] = []

    def press(tab: TestClient, label: str) -> None:
        for name in ("cats_100.png", "cats_101.png", "cats_102.png"):
            r = tab.post("/api/label", json={"path": name, "label": label}, headers=HEAD)
            answers.append(r.status_code)

    threads = [threading.Thread(target=press, args=(t, lab)) for t, lab in
               zip(tabs, ("cat", "not_cat"), strict=True)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each picture once: the other tab hears it is gone (404 before the lock, 409 under it)
    assert answers.count(200) == 3 and all(a in (200, 404, 409) for a in answers), answers
    rows = log_rows(data)
    assert len(rows) == 3 and len({r["source"] for r in rows}) == 3  # one move per picture
    assert all(Path(r["dest"]).is_file() for r in rows)
    assert not list((data / "unlabeled").glob("cats_*"))


def test_review_wrong_fixes_and_right_is_remembered(trained: TrainedRun, tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    session = open_session(data, LabelConfig(), trained.best)
    client = client_for(session)
    wrong = client.post(
        "/api/review",
        headers=HEAD,
        json={"path": "dogs/dogs_0.png", "tag": "not_cat", "verdict": "wrong"},
    )
    assert wrong.status_code == 200, wrong.text
    assert (data / "cats" / "dogs_0.png").exists() and not (data / "dogs" / "dogs_0.png").exists()
    assert log_rows(data)[0]["new_label"] == "cat"
    right = client.post(
        "/api/review",
        headers=HEAD,
        json={"path": "cats/cats_1.png", "tag": "cat", "verdict": "right"},
    )
    assert right.status_code == 200
    assert [r["label"] for r in log_rows(data, "reviewed.csv")] == ["cat"]
    session.rank()
    queue = session.review_queue(100)["items"]
    assert "cats/cats_1.png" not in [it["path"] for it in queue]  # left the queue for good
    from catnet.curation.reviewed import reviewed_paths

    assert str((data / "cats" / "cats_1.png").resolve()) in reviewed_paths(data)
    client.post("/api/undo", json={"action": right.json()["action"]}, headers=HEAD)
    assert log_rows(data, "reviewed.csv") == []
    client.post("/api/undo", json={"action": wrong.json()["action"]}, headers=HEAD)
    assert (data / "dogs" / "dogs_0.png").exists() and log_rows(data) == []


@pytest.mark.slow  # trains
def test_reviewed_pictures_are_weighted_up_at_teach(tmp_path: Path) -> None:
    from conftest import tiny_config

    from catnet.curation.reviewed import mark_reviewed
    from catnet.training.loop import train

    data = labelled_dir(tmp_path)
    mark_reviewed(data, data / "cats" / "cats_2.png", "x", "cat")
    messages: list[str] = []

    class Hear:
        def __getattr__(self, name: str):  # every other hook does nothing
            return lambda *a, **k: None

        def on_message(self, text: str) -> None:
            messages.append(text)

    train(tiny_config(data, tmp_path / "run", tmp_path / "cache", epochs=1), Hear())  # type: ignore[arg-type]
    assert any("1 corrected pictures weighted x4" in m for m in messages), messages


# --- Try, names, the page ---------------------------------------------------------------------


def test_try_gives_p_cat_and_refuses_garbage(trained: TrainedRun, tmp_path: Path) -> None:
    data = labelled_dir(tmp_path)
    client = client_for(open_session(data, LabelConfig(), trained.best))
    good = client.post("/api/try", content=(data / "cats" / "cats_0.png").read_bytes(),
                       headers=HEAD)  # fmt: skip
    assert good.status_code == 200 and 0.0 <= good.json()["p_cat"] <= 1.0
    assert good.json()["heatmap"] is None or good.json()["heatmap"].startswith("data:image/png")
    bad = client.post("/api/try", content=b"not a picture", headers=HEAD)
    assert bad.status_code == 409 and "not a picture" in bad.json()["error"]


def test_names_with_markup_stay_text(setup: tuple) -> None:
    data, _, client = setup
    evil = "<img src=x onerror=alert(2)><script>alert(1).png"  # no '/': names cannot hold one
    (data / "unlabeled" / evil).write_bytes((data / "cats" / "cats_0.png").read_bytes())
    names = [it["name"] for it in client.get("/api/queue", headers=HEAD).json()["items"]]
    assert evil in names  # JSON carries it as data
    page = client.get(f"/?token={TOKEN}")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/label.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "http" not in client.get("/static/label.css").text  # nothing loaded from elsewhere


def test_label_cli_usage_errors(tmp_path: Path) -> None:
    missing = catnet_cli("label", tmp_path / "nope")
    assert missing.returncode == 2 and "data folder not found" in missing.stderr
    data = labelled_dir(tmp_path)
    inside = catnet_cli("label", data, "--unlabeled", data / "cats")
    assert inside.returncode == 2 and "inside DATA_DIR" in inside.stderr
