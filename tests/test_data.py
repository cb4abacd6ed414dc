"""Finding, labelling, splitting and decoding pictures (catnet.data.folders)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import write_class
from PIL import Image

from catnet.curation.fingerprints import fingerprint_file
from catnet.data.folders import list_files, scan_dataset
from catnet.data.pixels import decode_square, to_rgb
from catnet.errors import CatnetError, DecodeError

MakeDataset = Callable[..., Path]
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def paths(samples: list) -> set[Path]:
    return {s.path for s in samples}


# --- layouts ---------------------------------------------------------------------------------


def test_flat_layout(tmp_path: Path, make_dataset: MakeDataset) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=10, classes=("cats", "dogs", "cars"))
    ds = scan_dataset(root, val_fraction=0.2, seed=0)
    assert ds.layout == "flat"
    assert ds.positive == "cats"
    assert ds.classes == ["cars", "cats", "dogs"]
    assert len(ds.train) + len(ds.val) == 30 and not ds.test
    assert all(s.label == (s.class_name == "cats") for s in ds.train + ds.val)


def test_split_layout(tmp_path: Path, make_dataset: MakeDataset) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=8, layout="split")
    ds = scan_dataset(root)
    assert ds.layout == "split"
    assert ds.counts(ds.train) == {"cats": 8, "dogs": 8}
    assert ds.counts(ds.val) == {"cats": 4, "dogs": 4}
    assert ds.counts(ds.test) == {"cats": 4, "dogs": 4}
    assert all(s.path.parts[-3] == "train" for s in ds.train)
    assert all(s.path.parts[-3] == "test" for s in ds.test)


def test_validation_folder_is_an_alias_for_val(tmp_path: Path, make_dataset: MakeDataset) -> None:
    root = make_dataset(
        tmp_path / "d", n_per_class=8, layout="split", splits=("train", "validation")
    )
    ds = scan_dataset(root)
    assert ds.layout == "split"
    assert ds.counts(ds.val) == {"cats": 4, "dogs": 4}
    assert all(s.path.parts[-3] == "validation" for s in ds.val)


def test_train_folder_alone_holds_out_part_of_train(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=10, layout="split", splits=("train", "test"))
    ds = scan_dataset(root, val_fraction=0.2)
    assert ds.counts(ds.val) == {"cats": 2, "dogs": 2}
    assert ds.counts(ds.train) == {"cats": 8, "dogs": 8}
    assert len(ds.test) == 10


# --- positive class ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cat", "cats", "Cats", "CAT"])
def test_positive_class_found_by_name(tmp_path: Path, name: str) -> None:
    write_class(tmp_path / name, "cat", 3, 16)
    write_class(tmp_path / "dogs", "dogs", 3, 16)
    ds = scan_dataset(tmp_path, val_fraction=0.0)
    assert ds.positive == name
    assert {s.label for s in ds.train if s.class_name == name} == {1}
    assert {s.label for s in ds.train if s.class_name == "dogs"} == {0}


def test_positive_given_explicitly(tmp_path: Path) -> None:
    write_class(tmp_path / "Kitties", "kitties", 3, 16)
    write_class(tmp_path / "dogs", "dogs", 3, 16)
    ds = scan_dataset(tmp_path, positive="kitties")
    assert ds.positive == "Kitties"
    assert sum(s.label for s in ds.train + ds.val) == 3


def test_missing_positive_class_gives_a_hint(tmp_path: Path) -> None:
    write_class(tmp_path / "kitties", "kitties", 3, 16)
    write_class(tmp_path / "dogs", "dogs", 3, 16)
    with pytest.raises(CatnetError) as info:
        scan_dataset(tmp_path)
    assert "--positive" in info.value.hint
    assert "kitties" in info.value.message  # the folders found are listed


def test_unknown_positive_name(tmp_path: Path) -> None:
    write_class(tmp_path / "cats", "cats", 3, 16)
    write_class(tmp_path / "dogs", "dogs", 3, 16)
    with pytest.raises(CatnetError, match="lions"):
        scan_dataset(tmp_path, positive="lions")


# --- unusable folders ---------------------------------------------------------------------------


def test_one_class_folder_is_an_error(tmp_path: Path) -> None:
    write_class(tmp_path / "cats", "cats", 4, 16)
    with pytest.raises(CatnetError, match="both"):
        scan_dataset(tmp_path)


def test_only_not_cats_is_an_error(tmp_path: Path) -> None:
    write_class(tmp_path / "cats", "cats", 0, 16)
    write_class(tmp_path / "dogs", "dogs", 4, 16)
    with pytest.raises(CatnetError, match="no cat pictures"):
        scan_dataset(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatnetError):
        scan_dataset(tmp_path / "empty")


def test_empty_class_folders_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    with pytest.raises(CatnetError, match="no files"):
        scan_dataset(tmp_path)


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CatnetError, match="not a folder"):
        scan_dataset(tmp_path / "file.txt")


# --- split ------------------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_disjoint(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=12, classes=("cats", "dogs", "cars"))
    a = scan_dataset(root, val_fraction=0.25, seed=1)
    b = scan_dataset(root, val_fraction=0.25, seed=1)
    c = scan_dataset(root, val_fraction=0.25, seed=2)
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert [s.path for s in a.train] == [s.path for s in b.train]
    assert paths(a.val) != paths(c.val)
    for ds in (a, c):
        assert ds.counts(ds.val) == {"cars": 3, "cats": 3, "dogs": 3}  # per class folder
        assert not paths(ds.train) & paths(ds.val)
        assert len(paths(ds.train) | paths(ds.val)) == 36


def test_split_keeps_one_of_each_class_on_both_sides(tmp_path: Path) -> None:
    write_class(tmp_path / "cats", "cats", 2, 16)
    write_class(tmp_path / "dogs", "dogs", 9, 16)
    ds = scan_dataset(tmp_path, val_fraction=0.1)
    assert ds.counts(ds.val) == {"cats": 1, "dogs": 1}
    assert ds.counts(ds.train) == {"cats": 1, "dogs": 8}


def test_split_does_not_depend_on_other_classes(tmp_path: Path, make_dataset: MakeDataset) -> None:
    a = make_dataset(tmp_path / "a", n_per_class=10, classes=("cats", "dogs"))
    b = make_dataset(tmp_path / "b", n_per_class=10, classes=("cats", "dogs", "cars"))
    names_a = {s.path.name for s in scan_dataset(a, seed=3).val if s.class_name == "cats"}
    names_b = {s.path.name for s in scan_dataset(b, seed=3).val if s.class_name == "cats"}
    assert names_a == names_b


# --- hidden entries -----------------------------------------------------------------------------


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    write_class(tmp_path / "cats", "cats", 3, 16)
    write_class(tmp_path / "dogs", "dogs", 3, 16)
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_class(tmp_path / "cats" / ".thumbnails", "cats", 2, 16)
    write_class(tmp_path / ".trash", "dogs", 2, 16)  # a hidden class folder
    (tmp_path / "cats" / "._cats_0.png").write_bytes(b"AppleDouble")
    ds = scan_dataset(tmp_path, val_fraction=0.0)
    assert ds.classes == ["cats", "dogs"]
    assert len(ds.train) == 6
    parts = [part for s in ds.train for part in s.path.relative_to(tmp_path).parts]
    assert not any(part.startswith(".") for part in parts)


def test_list_files_recurses_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    write_class(tmp_path / "b", "x", 2, 8)
    write_class(tmp_path / "a" / "deep", "y", 2, 8)
    (tmp_path / "README.txt").write_text("hi")
    found = list_files(tmp_path, {".png"})
    assert found == sorted(found)
    assert len(found) == 4
    assert len(list_files(tmp_path)) == 5


# --- decoding ---------------------------------------------------------------------------------


def solid(path: Path, mode: str, color: object, fmt: str | None = None, size: int = 20) -> Path:
    Image.new(mode, (size, size), color).save(path, fmt)
    return path


def assert_color(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 3) -> None:
    assert pixels.dtype == np.uint8
    diff = np.abs(pixels.astype(int) - np.array(rgb)).max()
    assert diff <= tol, f"expected {rgb}, got e.g. {pixels.reshape(-1, 3)[0]}"


def test_decode_returns_square_rgb_uint8(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20), (10, 200, 30)).save(tmp_path / "wide.png")
    out = decode_square(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3)
    assert_color(out, (10, 200, 30))


def test_png_named_jpg_is_decoded_by_content(tmp_path: Path) -> None:
    path = solid(tmp_path / "really_a_png.jpg", "RGB", RED, "PNG")
    assert_color(decode_square(path, 8), RED)


def test_file_without_extension_is_decoded(tmp_path: Path) -> None:
    path = solid(tmp_path / "noext", "RGB", BLUE, "PNG")
    assert_color(decode_square(path, 8), BLUE)


def test_text_named_jpg_is_skipped_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file\n")
    with pytest.raises(DecodeError, match="not a picture"):
        decode_square(path, 8)


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    with pytest.raises(DecodeError, match="empty"):
        decode_square(tmp_path / "empty.jpg", 8)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="not found"):
        decode_square(tmp_path / "gone.png", 8)
    with pytest.raises(DecodeError, match="not a regular file"):
        decode_square(tmp_path, 8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"unreadable|truncated"):
        decode_square(path, 16)


def test_gray_l(tmp_path: Path) -> None:
    assert_color(decode_square(solid(tmp_path / "l.png", "L", 77), 8), (77, 77, 77))


def test_la_transparent_is_composited_on_white(tmp_path: Path) -> None:
    assert_color(decode_square(solid(tmp_path / "la.png", "LA", (0, 0)), 8), WHITE)
    assert_color(decode_square(solid(tmp_path / "la2.png", "LA", (50, 255)), 8), (50, 50, 50))


def test_rgba(tmp_path: Path) -> None:
    assert_color(decode_square(solid(tmp_path / "t.png", "RGBA", (255, 0, 0, 0)), 8), WHITE)
    assert_color(decode_square(solid(tmp_path / "o.png", "RGBA", (255, 0, 0, 255)), 8), RED)
    half = decode_square(solid(tmp_path / "h.png", "RGBA", (0, 0, 0, 128)), 8)
    assert_color(half, (127, 127, 127), tol=2)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    img.paste(1, (10, 0, 20, 20))  # right half green
    img.save(tmp_path / "p.png", transparency=0)  # black = transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = decode_square(tmp_path / "p.png", 20)
    assert_color(out[:, :8], WHITE)
    assert_color(out[:, 12:], (0, 255, 0))


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.gif")
    assert_color(decode_square(tmp_path / "p.gif", 8), BLUE)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("TIFF", "tif")])
def test_cmyk(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = solid(tmp_path / f"c.{suffix}", "CMYK", (0, 255, 255, 0), fmt)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    assert_color(decode_square(path, 8), RED, tol=8)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    mid = np.full((16, 16), 32768, dtype=np.uint16)
    Image.fromarray(mid).save(tmp_path / "mid.png")
    assert Image.open(tmp_path / "mid.png").mode.startswith("I")
    assert_color(decode_square(tmp_path / "mid.png", 8), (128, 128, 128), tol=1)
    full = np.full((16, 16), 65535, dtype=np.uint16)
    Image.fromarray(full).save(tmp_path / "full.png")
    assert_color(decode_square(tmp_path / "full.png", 8), WHITE, tol=0)


def test_dark_16_bit_png_stays_dark(tmp_path: Path) -> None:
    # 200/65535 is almost black; it must not be read as 8-bit 200 (light gray).
    Image.fromarray(np.full((16, 16), 200, dtype=np.uint16)).save(tmp_path / "dark.png")
    assert_color(decode_square(tmp_path / "dark.png", 8), (0, 0, 0), tol=1)


def test_16_bit_gradient_keeps_its_order(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    row = decode_square(tmp_path / "ramp.png", 32)[16, :, 0].astype(int)
    assert row[0] <= 5 and row[-1] >= 250
    assert np.all(np.diff(row) >= 0)


def test_float_mode_to_rgb() -> None:
    img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")
    assert_color(np.asarray(to_rgb(img)), (127, 127, 127), tol=1)


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 3
    assert_color(decode_square(tmp_path / "anim.gif", 8), RED, tol=4)


@pytest.mark.parametrize(
    "fmt,suffix",
    [("WEBP", "webp"), ("TIFF", "tiff"), ("BMP", "bmp"), ("PNG", "png"), ("JPEG", "jpeg")],
)
def test_common_formats(tmp_path: Path, fmt: str, suffix: str) -> None:
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            pytest.skip("Pillow built without WebP")
        Image.new("RGB", (16, 16), BLUE).save(tmp_path / "x.webp", lossless=True)
        path = tmp_path / "x.webp"
    else:
        path = solid(tmp_path / f"x.{suffix}", "RGB", BLUE, fmt, size=16)
    assert_color(decode_square(path, 8), BLUE, tol=4)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    # A 48x24 picture, left half red, right half blue, tagged "rotate 90 degrees clockwise to
    # display" (Orientation=6). Displayed, it is 24 wide and 48 tall with red on top.
    img = Image.new("RGB", (48, 24), BLUE)
    img.paste(RED, (0, 0, 24, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_square(path, 16)  # centre square of the upright picture
    assert_color(out[1:6, 2:14], RED, tol=40)  # top
    assert_color(out[10:15, 2:14], BLUE, tol=40)  # bottom


def test_pixel_limit_is_refused(tmp_path: Path) -> None:
    path = solid(tmp_path / "big.png", "RGB", RED, size=40)
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_square(path, 8, max_pixels=40 * 40 - 1)
    assert_color(decode_square(path, 8, max_pixels=40 * 40), RED)


def test_decompression_bomb_header_is_refused(tmp_path: Path) -> None:
    # A small file that claims 5000x5000 pixels: refused from the header, no allocation.
    path = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_square(path, 8, max_pixels=1_000_000)


def test_pixel_limit_is_max_pixels_not_pillows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = solid(tmp_path / "forty.png", "RGB", RED, size=40)  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow warns above 1,000
    assert_color(decode_square(path, 8, max_pixels=10_000), RED)
    # Pillow refuses outright above twice its limit: max_pixels still decides, and Pillow's
    # process-wide setting is left as the caller set it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert_color(decode_square(path, 8, max_pixels=10_000), RED)
    with pytest.raises(DecodeError, match=r"too many pixels \(40x40, limit 1,000\)"):
        decode_square(path, 8, max_pixels=1_000)
    facts = fingerprint_file(str(path), 10_000)
    assert facts["size"] == (40, 40) and "dhash" in facts
    assert Image.MAX_IMAGE_PIXELS == 500
