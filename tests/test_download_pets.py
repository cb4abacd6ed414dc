"""Offline tests for scripts/download_pets.py, using a tiny fake Oxford-IIIT Pet tree."""

from __future__ import annotations

import importlib.util
import socket
import sys
import urllib.error
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download_pets.py"

# (image, class-id, species, breed-id); species 1 = cat, 2 = dog.
CATS = [("Abyssinian_1", 1, 1, 1), ("Abyssinian_2", 1, 1, 1), ("Bengal_1", 6, 1, 2)]
DOGS = [("beagle_1", 11, 2, 3), ("beagle_2", 11, 2, 3), ("pug_1", 26, 2, 17)]
MISSING = ("Bengal_404", 6, 1, 2)  # listed but no image file


def _load_script() -> ModuleType:
    # scripts/ is not a package, so load the file directly.
    spec = importlib.util.spec_from_file_location("download_pets", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dp() -> ModuleType:
    return _load_script()


@pytest.fixture
def pet_root(tmp_path: Path) -> Path:
    """A torchvision-style root: ROOT/oxford-iiit-pet/{annotations,images}."""
    base = tmp_path / "cache" / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    (base / "images").mkdir()
    rows = [*CATS, MISSING, *DOGS]
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
    lines = [" ".join(map(str, row)) for row in rows]
    (base / "annotations" / "list.txt").write_text(header + "\n".join(lines) + "\n")
    for i, (name, *_rest) in enumerate([*CATS, *DOGS]):
        Image.new("RGB", (4, 4), (i * 30, 0, 0)).save(base / "images" / f"{name}.jpg")
    return tmp_path / "cache"


def _listing(out: Path) -> dict[str, list[str]]:
    return {d: sorted(p.name for p in (out / d).iterdir()) for d in ("cats", "dogs")}


def test_import_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used at import time")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    module = _load_script()
    assert callable(module.convert) and callable(module.main)


def test_read_annotations_skips_comments(dp: ModuleType, pet_root: Path) -> None:
    records = dp.read_annotations(pet_root)
    assert [r.image for r in records] == [r[0] for r in [*CATS, MISSING, *DOGS]]
    assert {r.species for r in records} == {1, 2}


def test_convert_splits_species_and_counts(dp: ModuleType, pet_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    counts = dp.convert(pet_root, out)
    assert counts == {"cats": 3, "dogs": 3, "written": 6, "existing": 0, "missing": 1}
    assert _listing(out) == {
        "cats": sorted(f"{r[0]}.jpg" for r in CATS),
        "dogs": sorted(f"{r[0]}.jpg" for r in DOGS),
    }
    with Image.open(out / "cats" / "Bengal_1.jpg") as img:  # a real, readable copy
        assert img.size == (4, 4)


def test_convert_is_idempotent(dp: ModuleType, pet_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    dp.convert(pet_root, out)
    before = _listing(out)
    counts = dp.convert(pet_root, out)
    assert counts == {"cats": 3, "dogs": 3, "written": 0, "existing": 6, "missing": 1}
    assert _listing(out) == before


def test_convert_link_and_pet_dir_root(dp: ModuleType, pet_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    # Passing the oxford-iiit-pet folder itself works too.
    counts = dp.convert(pet_root / "oxford-iiit-pet", out, link=True)
    assert counts["written"] == 6
    src = pet_root / "oxford-iiit-pet" / "images" / "pug_1.jpg"
    assert (out / "dogs" / "pug_1.jpg").read_bytes() == src.read_bytes()


def test_max_per_class_is_deterministic_and_covers_breeds(
    dp: ModuleType, pet_root: Path, tmp_path: Path
) -> None:
    counts = dp.convert(pet_root, tmp_path / "a", max_per_class=2)
    assert counts["cats"] == 2 and counts["dogs"] == 2 and counts["missing"] == 1
    # Round-robin over breeds: one of each breed rather than two Abyssinians.
    assert _listing(tmp_path / "a") == {
        "cats": ["Abyssinian_1.jpg", "Bengal_1.jpg"],
        "dogs": ["beagle_1.jpg", "pug_1.jpg"],
    }
    dp.convert(pet_root, tmp_path / "b", max_per_class=2)
    assert _listing(tmp_path / "b") == _listing(tmp_path / "a")


def test_convert_without_annotations_raises(dp: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dp.convert(tmp_path, tmp_path / "out")


def test_main_converts_after_download(
    dp: ModuleType, pet_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand in for torchvision so no network (and no slow torch import) is needed.
    monkeypatch.setattr(dp, "download", lambda root: root / "oxford-iiit-pet")
    out = tmp_path / "data"
    rc = dp.main(["--out", str(out), "--root", str(pet_root), "--max-per-class", "1"])
    assert rc == 0
    assert {k: len(v) for k, v in _listing(out).items()} == {"cats": 1, "dogs": 1}


def test_main_download_failure_exits_1(
    dp: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def fail(root: Path) -> Path:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(dp, "download", fail)
    assert dp.main(["--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "cats").exists()


def test_main_rejects_bad_max_per_class(dp: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        dp.main(["--out", str(tmp_path), "--max-per-class", "0"])
    assert exc.value.code == 2
