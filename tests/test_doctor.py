"""`catnet check`: a corpus of every kind of broken, odd and duplicated file, and what the doctor
says about each; --fix moves only unreadable files and --undo restores them byte for byte."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from catnet.cli.check_view import print_check
from catnet.curation.check import check_dataset, fix_dataset, undo_fix
from catnet.curation.fingerprints import dhash, near_pairs
from catnet.data.folders import list_files
from catnet.data.pixels import decode_square
from catnet.errors import CatnetError, DecodeError

NON_UTF8 = b"caf\xe9.png"  # Latin-1 é: not valid UTF-8
NON_UTF8_BAD = b"bad\xff.jpg"


def smooth(seed: int, size: int = 64) -> Image.Image:
    """Distinct pictures with broad gradients, so their dHashes are far apart (random ~32 bits)
    and survive re-encoding; flat colours would all hash to 0 and look like near duplicates."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def save(img: Image.Image, path: Path, fmt: str = "PNG", **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG whose header claims 1.6 gigapixels, in 60 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_split_corpus(root: Path) -> None:
    """train/ val/ layout with one file for every case the doctor must handle."""
    cats, dogs, vcats, vdogs = (
        root / p for p in ("train/cats", "train/dogs", "val/cats", "val/dogs")
    )
    for i in range(3):
        save(smooth(i), cats / f"c{i}.png")
        save(smooth(10 + i), dogs / f"d{i}.png")
        save(smooth(20 + i), vdogs / f"v{i}.png")
    save(smooth(30), cats / "leak.png")
    save(smooth(30), vcats / "leak.png")  # same bytes in val: exact leak
    save(smooth(31), cats / "near.png")
    (vcats / "near_q40.jpg").write_bytes(jpeg_bytes(smooth(31), 40))  # re-encoded: near leak
    save(smooth(32), vcats / "v_cat.png")
    (dogs / "d0_copy.png").write_bytes((dogs / "d0.png").read_bytes())  # duplicate, same split
    save(smooth(11).resize((60, 60), Image.Resampling.BILINEAR), dogs / "d1_small.png")  # near
    # Unreadable
    (dogs / "zero.jpg").write_bytes(b"")
    whole = jpeg_bytes(smooth(40, 128))
    (dogs / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # a half download
    (dogs / "text.jpg").write_text("this is not a picture\n")
    (dogs / "bomb.png").write_bytes(bomb_png())
    (dogs / "broken.jpg").symlink_to(dogs / "nowhere.jpg")
    (dogs / "loop.jpg").symlink_to("loop.jpg")
    (dogs / "x.jpg").mkdir()  # a folder named like a picture: not a file, not reported
    with open(os.fsencode(dogs) + b"/" + NON_UTF8_BAD, "wb") as f:
        f.write(b"garbage")
    # Readable but odd
    save(smooth(41), dogs / "png_named.jpg")  # PNG content, .jpg name: lying, still readable
    save(smooth(42).convert("CMYK"), dogs / "cmyk.jpg", "JPEG")
    save(smooth(43).convert("P"), dogs / "palette.png")
    save(smooth(44).convert("RGBA"), dogs / "rgba.png")
    save(smooth(45).convert("LA"), dogs / "la.png")
    gray16 = (np.asarray(smooth(46).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(gray16), dogs / "gray16.png")
    save(smooth(47, 16), dogs / "tiny.png")
    with open(os.fsencode(cats) + b"/" + NON_UTF8, "wb") as f:
        smooth(48).save(f, "PNG")
    (cats / ".hidden.jpg").write_text("ignored, as training ignores it")


UNREADABLE = {
    "train/dogs/zero.jpg": "empty file (0 bytes)",
    "train/dogs/truncated.jpg": "unreadable: truncated file",
    "train/dogs/text.jpg": "not a picture (unknown format)",
    "train/dogs/bomb.png": "too many pixels (40000x40000, limit 120,000,000)",
    "train/dogs/broken.jpg": "broken symbolic link",
    "train/dogs/loop.jpg": "symbolic link loop",
    "train/dogs/" + os.fsdecode(NON_UTF8_BAD): "not a picture (unknown format)",
}


@pytest.fixture(scope="module")
def split_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split")
    make_split_corpus(root)
    return root


@pytest.fixture(scope="module")
def split_report(split_root: Path) -> dict:
    return check_dataset(split_root, workers=2)  # 2 workers: exercises the process pool


def test_unreadable_files_and_reasons(split_report: dict) -> None:
    got = {e["path"]: e["reason"] for e in split_report["unreadable"]}
    assert got == UNREADABLE
    assert split_report["n_files"] == 31  # not .hidden.jpg, not the folder x.jpg/
    assert split_report["n_images"] == 31 - len(UNREADABLE)


def test_verdicts_match_what_training_would_say(split_root: Path, split_report: dict) -> None:
    """Same reasons as data.decode_square (which training uses), only symlinks more precise."""
    reported = {e["path"]: e["reason"] for e in split_report["unreadable"]}
    for path in list_files(split_root):
        rel = path.relative_to(split_root).as_posix()
        try:
            decode_square(path, 32)
            expected = None
        except DecodeError as exc:
            expected = exc.reason
        if expected == "file not found":
            assert reported[rel] in ("broken symbolic link", "symbolic link loop")
        else:
            assert reported.get(rel) == expected, rel


def test_counts_per_split_and_class(split_report: dict) -> None:
    assert split_report["layout"] == "split"
    assert split_report["positive"] == "cats"
    assert split_report["counts"] == {
        "train": {"cats": 6, "dogs": 12},  # dogs: 19 files, 7 unreadable
        "val": {"cats": 3, "dogs": 3},
    }


def test_odd_modes_tiny_and_lying_extensions(split_report: dict) -> None:
    modes = {e["path"].rsplit("/", 1)[1]: e["mode"] for e in split_report["odd_modes"]}
    assert modes == {"cmyk.jpg": "CMYK", "palette.png": "P", "rgba.png": "RGBA", "la.png": "LA",
                     "gray16.png": "I;16"}  # fmt: skip
    assert split_report["tiny"] == [{"path": "train/dogs/tiny.png", "width": 16, "height": 16}]
    assert split_report["lying_extensions"] == [
        {"path": "train/dogs/png_named.jpg", "extension": ".jpg", "format": "PNG"}
    ]


def test_duplicates_near_duplicates_and_leaks(split_report: dict) -> None:
    dup = sorted(sorted(g) for g in split_report["duplicates"])
    assert dup == [["train/cats/leak.png", "val/cats/leak.png"],
                   ["train/dogs/d0.png", "train/dogs/d0_copy.png"]]  # fmt: skip
    near = sorted(sorted(g) for g in split_report["near_duplicates"])
    assert near == [["train/cats/near.png", "val/cats/near_q40.jpg"],
                    ["train/dogs/d1.png", "train/dogs/d1_small.png"]]  # fmt: skip
    leaks = sorted(split_report["leaks"], key=lambda e: e["kind"])
    assert leaks == [
        {"kind": "exact", "splits": ["train", "val"],
         "paths": ["train/cats/leak.png", "val/cats/leak.png"]},
        {"kind": "near", "splits": ["train", "val"],
         "paths": ["train/cats/near.png", "val/cats/near_q40.jpg"]},
    ]  # fmt: skip
    assert "leak_note" not in split_report


def test_report_is_json_with_lossless_non_utf8_names(split_report: dict) -> None:
    text = json.dumps(split_report)
    assert text.isascii()
    back = json.loads(text)
    for key in ("n_images", "unreadable", "duplicates", "leaks", "counts", "near_duplicates"):
        assert back[key] == split_report[key]
    raw = {os.fsencode(e["path"]) for e in back["unreadable"]}
    assert b"train/dogs/" + NON_UTF8_BAD in raw  # round trip back to the real file name
    assert json.loads(text)["unreadable"][0].keys() == {"path", "reason"}


def test_print_check_and_json_survive_a_strict_utf8_terminal(split_report: dict) -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    console = Console(file=out, width=120, color_system=None)
    print_check(split_report, console)
    console.print_json(json.dumps(split_report), ensure_ascii=True)  # as the CLI does
    out.flush()
    shown = raw.getvalue().decode("utf-8")
    assert "bad\\xff.jpg" in shown and "symbolic link loop" in shown
    assert "Same picture in more than one split" in shown


def test_print_check_shows_twenty_rows_then_a_count(split_report: dict) -> None:
    many = [{"path": f"train/cats/{i}.jpg", "reason": "truncated file"} for i in range(25)]
    console = Console(file=io.StringIO(), width=120, color_system=None)
    print_check({**split_report, "unreadable": many}, console)
    shown = console.file.getvalue()
    assert "train/cats/19.jpg" in shown and "train/cats/20.jpg" not in shown
    assert "... and 5 more" in shown


def snapshot(root: Path) -> dict[str, bytes]:
    """Every entry under root except .catnet: file bytes, or the target of a symlink."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if d != b".catnet"]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                found[path] = b"link:" + os.readlink(path)
            elif os.path.isfile(path):
                found[path] = Path(os.fsdecode(path)).read_bytes()
            else:
                found[path] = b"dir"
    return found


def test_fix_moves_only_unreadable_and_undo_restores(tmp_path: Path) -> None:
    make_split_corpus(tmp_path)
    before = snapshot(tmp_path)
    report = check_dataset(tmp_path, workers=1)
    quarantine = fix_dataset(tmp_path, report)
    assert quarantine == tmp_path / ".catnet" / "quarantine"
    after = snapshot(tmp_path)
    moved = {os.fsencode(tmp_path / p) for p in UNREADABLE}
    assert set(before) - set(after) == moved  # only the unreadable files left
    assert all(after[p] == before[p] for p in after)  # nothing else touched
    manifest = json.loads((quarantine / "manifest.json").read_text())
    assert {e["original"] for e in manifest["entries"]} == set(UNREADABLE)
    assert all(e["reason"] == UNREADABLE[e["original"]] and e["time"] for e in manifest["entries"])
    assert (quarantine / "train/dogs/truncated.jpg").is_file()
    assert os.readlink(quarantine / "train/dogs/loop.jpg") == "loop.jpg"  # the link itself
    again = check_dataset(tmp_path, workers=1)
    assert again["unreadable"] == [] and again["n_images"] == report["n_images"]

    assert undo_fix(tmp_path) == len(UNREADABLE)
    assert snapshot(tmp_path) == before  # byte-identical, links and odd names included
    assert json.loads((quarantine / "manifest.json").read_text())["entries"] == []
    assert undo_fix(tmp_path) == 0


def test_undo_never_overwrites(tmp_path: Path) -> None:
    save(smooth(1), tmp_path / "cats" / "a.png")
    save(smooth(2), tmp_path / "dogs" / "b.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    fix_dataset(tmp_path, check_dataset(tmp_path, workers=1))
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"a new file, keep me")
    with pytest.raises(CatnetError, match=r"broken\.jpg") as err:
        undo_fix(tmp_path)
    assert err.value.exit_code == 1
    assert (tmp_path / "dogs" / "broken.jpg").read_bytes() == b"a new file, keep me"
    manifest = json.loads((tmp_path / ".catnet/quarantine/manifest.json").read_text())
    assert [e["original"] for e in manifest["entries"]] == ["dogs/broken.jpg"]
    # A second --fix of a file with the same name keeps both quarantined copies.
    fix_dataset(tmp_path, check_dataset(tmp_path, workers=1))
    assert (
        tmp_path / ".catnet/quarantine/dogs/broken-1.jpg"
    ).read_bytes() == b"a new file, keep me"


def test_flat_layout_has_no_leaks_but_reports_duplicates(tmp_path: Path) -> None:
    save(smooth(1), tmp_path / "cats" / "a.png")
    save(smooth(1), tmp_path / "cats" / "a_copy.png")
    save(smooth(2), tmp_path / "dogs" / "b.png")
    (tmp_path / "dogs" / "b.jpg").write_bytes(jpeg_bytes(smooth(2), 50))
    (tmp_path / "dogs" / "empty.png").write_bytes(b"")
    report = check_dataset(tmp_path, workers=1)
    assert report["layout"] == "flat"
    assert report["counts"] == {"all": {"cats": 2, "dogs": 2}}
    assert report["duplicates"] == [["cats/a.png", "cats/a_copy.png"]]
    assert report["near_duplicates"] == [["dogs/b.jpg", "dogs/b.png"]]
    assert report["leaks"] == [] and "catnet makes the train/val split" in report["leak_note"]
    assert report["unreadable"] == [{"path": "dogs/empty.png", "reason": "empty file (0 bytes)"}]


def test_max_pixels_limit_is_reported(tmp_path: Path) -> None:
    save(smooth(1, 100), tmp_path / "cats" / "big.png")
    report = check_dataset(tmp_path, workers=1, max_pixels=5000)
    assert report["unreadable"] == [
        {"path": "cats/big.png", "reason": "too many pixels (100x100, limit 5,000)"}
    ]


def test_user_errors_are_catnet_errors(tmp_path: Path) -> None:
    with pytest.raises(CatnetError, match="not found"):
        check_dataset(tmp_path / "missing")
    save(smooth(1), tmp_path / "dogs" / "a.png")
    with pytest.raises(CatnetError, match="cat"):
        check_dataset(tmp_path)
    assert check_dataset(tmp_path, positive="dogs")["n_images"] == 1


def test_near_pairs_blocks_and_hamming_threshold() -> None:
    base = 0x0123_4567_89AB_CDEF
    hashes = [base, base ^ 0b1111, base ^ 0b11111, *range(300)]  # 4 bits off, 5 bits off
    pairs = near_pairs(hashes, 4)  # 303 hashes: three blocks of rows
    brute = [(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
             if bin(hashes[i] ^ hashes[j]).count("1") <= 4]  # fmt: skip
    assert sorted(pairs) == brute
    assert (0, 1) in brute and (0, 2) not in brute and (127, 128) in brute
    assert dhash(smooth(3)) == dhash(smooth(3).convert("RGBA"))


def test_undo_skips_entries_outside_the_folder_or_gone(tmp_path: Path) -> None:
    save(smooth(1), tmp_path / "cats" / "a.png")
    manifest = tmp_path / ".catnet" / "quarantine" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    entries = [
        {"original": "../escape.png", "quarantined": "x.png", "reason": "r", "time": "t"},
        {"original": "cats/gone.png", "quarantined": "cats/gone.png", "reason": "r", "time": "t"},
    ]
    manifest.write_text(json.dumps({"entries": entries}))
    with pytest.raises(CatnetError, match="outside the data folder") as err:
        undo_fix(tmp_path)
    assert "gone from the quarantine" in err.value.message
    assert json.loads(manifest.read_text())["entries"] == entries[:1]  # the gone one is dropped
    manifest.write_text("{not json")
    with pytest.raises(CatnetError, match="cannot read the quarantine manifest"):
        undo_fix(tmp_path)
