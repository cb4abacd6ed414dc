"""The procedural picture generator behind `catnet demo`: layout, determinism, and variety."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catnet.demo.synthetic import CLASSES, draw_image, generate_dataset, generate_unlabeled


def _bytes_by_name(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("size", [32, 48])
def test_draw_image_is_rgb_of_requested_size(kind: str, size: int) -> None:
    img = draw_image(kind, random.Random(0), size)
    assert img.mode == "RGB"
    assert img.size == (size, size)


def test_draw_image_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="dogs"):
        draw_image("dogs", random.Random(0))


def test_generate_dataset_layout_and_counts(tmp_path: Path) -> None:
    counts = generate_dataset(tmp_path / "data", n_per_class=6, size=32, seed=0)
    assert counts == dict.fromkeys(CLASSES, 6)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(CLASSES)
    suffixes = set()
    for kind in CLASSES:
        files = sorted((tmp_path / "data" / kind).iterdir())
        assert sorted(p.stem for p in files) == sorted(f"{kind}_{i}" for i in range(6))
        for path in files:
            suffixes.add(path.suffix)
            with Image.open(path) as img:
                assert img.mode == "RGB"
                assert img.size == (32, 32)
    assert suffixes == {".png", ".jpg"}  # a mix of formats, as real folders have


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", n_per_class=3, size=32, seed=5)
    generate_dataset(tmp_path / "b", n_per_class=3, size=32, seed=5)
    generate_dataset(tmp_path / "c", n_per_class=3, size=32, seed=6)
    a, b, c = (_bytes_by_name(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c


def test_generate_dataset_subset_and_rerun_replaces_old_files(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert generate_dataset(out, n_per_class=5, size=32, classes=["cats", "noise"]) == {
        "cats": 5,
        "noise": 5,
    }
    (out / "cats" / "mine.png").write_bytes(b"not ours")
    generate_dataset(out, n_per_class=2, size=32, seed=9, classes=["cats"])
    assert sorted(p.stem for p in (out / "cats").iterdir()) == ["cats_0", "cats_1", "mine"]
    assert len(list((out / "noise").iterdir())) == 5  # other classes are left alone


def test_generate_dataset_rejects_unknown_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dogs"):
        generate_dataset(tmp_path, n_per_class=1, classes=["dogs"])


def test_pictures_differ_within_and_across_classes() -> None:
    def pixels(kind: str, i: int) -> np.ndarray:
        return np.asarray(draw_image(kind, random.Random(f"{kind}{i}"), 32), np.float32)

    pics = {kind: [pixels(kind, i) for i in range(8)] for kind in CLASSES}
    for kind, imgs in pics.items():
        # Not one picture repeated: every pair in the class differs noticeably.
        diffs = [np.abs(a - b).mean() for i, a in enumerate(imgs) for b in imgs[i + 1 :]]
        assert min(diffs) > 5, kind
    means = {kind: np.mean(imgs, axis=0) for kind, imgs in pics.items()}
    for kind in CLASSES:
        if kind != "cats":
            assert np.abs(means["cats"] - means[kind]).mean() > 1, kind


def test_generate_unlabeled_returns_paths_and_true_kinds(tmp_path: Path) -> None:
    items = generate_unlabeled(tmp_path / "new", n=12, size=40, seed=3)
    assert [p.name for p, _ in items] == [f"img_{i}.jpg" for i in range(12)]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(p.name for p, _ in items)
    assert {kind for _, kind in items} <= set(CLASSES)
    assert len({kind for _, kind in items}) > 1  # mixed kinds
    for path, _ in items:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (40, 40))
    again = generate_unlabeled(tmp_path / "again", n=12, size=40, seed=3)
    assert [k for _, k in again] == [k for _, k in items]
    assert [p.read_bytes() for p, _ in again] == [p.read_bytes() for p, _ in items]


@pytest.mark.slow  # a fresh interpreter
def test_generator_does_not_import_torch() -> None:
    code = "import sys, catnet.demo.synthetic; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
