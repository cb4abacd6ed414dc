"""catnet.runtime.files: atomic replacement and never-overwrite placement."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pytest

from catnet.errors import WriteFailed
from catnet.runtime.files import (
    atomic_write,
    atomic_write_text,
    copy_new,
    create_new,
    move_new,
)


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "index.json"
    assert atomic_write_text(target, "old") == target
    atomic_write_text(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert os.listdir(target.parent) == ["index.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("complete old file")

    def half_then_fail(fh: BinaryIO) -> None:
        fh.write(b"half of a new")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteFailed, match=f"could not write {target}: no space left on device"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "complete old file"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_free_names_are_numbered_before_the_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "a-1.jpg").symlink_to(tmp_path / "gone")  # a broken link still takes the name
    source = tmp_path / "src"
    source.write_bytes(b"new")
    assert create_new(tmp_path / "a.jpg", partial(copy_new, source)) == tmp_path / "a-2.jpg"
    assert create_new(tmp_path / "b.jpg", partial(copy_new, source)) == tmp_path / "b.jpg"
    assert (tmp_path / "a.jpg").read_bytes() == b"1" and (
        tmp_path / "a-2.jpg"
    ).read_bytes() == b"new"


def test_create_new_never_overwrites_even_a_file_that_appears_meanwhile(tmp_path: Path) -> None:
    source = tmp_path / "src.png"
    source.write_bytes(b"picture")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "src.png").write_bytes(b"keep me")
    tried: list[Path] = []

    def racing_copy(target: Path) -> None:
        tried.append(target)
        if len(tried) == 1:  # another process takes the free name just before we do
            target.write_bytes(b"theirs")
        copy_new(source, target)

    placed = create_new(tmp_path / "out" / "src.png", racing_copy)
    assert placed == tmp_path / "out" / "src-2.png"
    assert tried == [tmp_path / "out" / "src-1.png", placed]
    assert (tmp_path / "out" / "src.png").read_bytes() == b"keep me"
    assert (tmp_path / "out" / "src-1.png").read_bytes() == b"theirs"
    assert placed.read_bytes() == b"picture"


def test_move_new_moves_a_symlink_itself_and_refuses_to_replace(tmp_path: Path) -> None:
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    busy = tmp_path / "busy.jpg"
    busy.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        move_new(link, busy)
    assert busy.read_bytes() == b"keep" and link.is_symlink()
    placed = create_new(busy, partial(move_new, link))
    assert placed == tmp_path / "busy-1.jpg"
    assert placed.is_symlink() and not os.path.lexists(link)


def test_a_failed_copy_leaves_no_file_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        copy_new(tmp_path / "missing.jpg", tmp_path / "copy.jpg")
    assert not os.path.lexists(tmp_path / "copy.jpg")


def test_run_and_teach_folders_share_the_numbering_and_never_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders get free names the way files do (name, name-1, ...), claimed by the mkdir
    itself: a name another process takes between a check and the creation is skipped. Every
    existence check is blinded here, as in that race; the old check-then-mkdir of new_run_dir
    failed on the taken name (and new_teach_dir numbered from -2)."""
    from catnet.labelling.teach import new_teach_dir
    from catnet.training.runs import new_run_dir

    monkeypatch.setattr("time.strftime", lambda fmt: "20240101-120000")
    (tmp_path / "runs" / "20240101-120000").mkdir(parents=True)
    (tmp_path / "teach" / "teach-20240101-120000").mkdir(parents=True)
    monkeypatch.setattr(os.path, "lexists", lambda path: False)
    monkeypatch.setattr(Path, "exists", lambda self, **kw: False)
    assert new_run_dir("") == Path("runs") / "20240101-120000-1"
    assert new_run_dir("") == Path("runs") / "20240101-120000-2"
    teach = tmp_path / "teach"
    assert new_teach_dir(teach) == teach / "teach-20240101-120000-1"
    assert all(p.is_dir() for p in (tmp_path / "runs").iterdir())


def test_data_uri_takes_a_picture_or_its_encoded_bytes() -> None:
    """One helper for every page that inlines a picture (report plots and thumbnails, the
    explain heatmaps, the labelling page's Try heatmap)."""
    import base64
    import io

    from PIL import Image

    from catnet.explaining.heatmaps import data_uri

    picture = Image.new("RGB", (4, 3), (200, 30, 60))
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    assert data_uri(buf.getvalue()) == data_uri(picture)
    assert data_uri(picture).startswith("data:image/png;base64,")
    jpeg = data_uri(picture, "JPEG")
    assert jpeg.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(jpeg.split(",", 1)[1])))
    assert decoded.format == "JPEG" and decoded.size == (4, 3)


def test_file_key_accepts_every_name_a_file_system_allows(tmp_path: Path) -> None:
    """Non-UTF-8 bytes in a name: the key round-trips to the bytes with os.fsencode, and the
    feature cache (which hashes it) stores and finds the file. Old code: UnicodeEncodeError
    in the feature cache, the default model's training stopped with a traceback."""
    import torch

    from catnet.data.cache import file_key
    from catnet.training.features import FeatureStore

    path = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9 \n-x.png")))
    try:
        path.write_bytes(b"not really a picture")
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    key = file_key(path)
    assert key is not None and os.fsencode(key).startswith(os.fsencode(path.resolve()))
    store = FeatureStore(tmp_path / "cache", "tag")
    store.put(path, torch.ones(3), torch.zeros(3))
    found = store.get(path)
    assert found is not None and torch.equal(found[0], torch.ones(3))
    # Names no file system allows are no file: no key, no crash.
    assert file_key(tmp_path / "lone\ud800surrogate.png") is None
    assert file_key(tmp_path / "nul\0byte.png") is None
