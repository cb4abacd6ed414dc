"""Reliability: bad pictures make no crash and lose nothing.

One corpus, written by the tests, holds every kind of broken or odd file a real folder of
pictures ends up with. Through the real entry point (`python -m catnet`, with a timeout so a
hang fails the test) train, evaluate, predict and check must each name every unusable file
with a reason, use every usable one, and never show a traceback. decode_square, the one
function every command decodes with, is also tested file by file on the same corpus.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import draw_picture, make_dataset
from PIL import Image, ImageDraw

from catnet.data.pixels import decode_square
from catnet.errors import DecodeError

NON_UTF8_NAME = b"caf\xe9.jpg"  # Latin-1 é: not valid UTF-8
BOMB_SIDE = 60_000  # a PNG header claiming 3.6 gigapixels (10.8 GB as RGB)
BIG_SIDE = 8_000  # a real 64-megapixel photo: large, but under the 120 MP limit
TIMEOUT_S = 60  # one CLI command; a hang fails the test instead of blocking the suite
ODD_NAMES = ("with space.png", "kätzchen 猫.png", "new\nline.png", "-leading-dash.png")
# Both networks: the CNN, and the default (pretrained, head only on cached features) at 64 px.
MODELS = {
    "cnn": ("--model", "cnn", "--width", "8", "--depth", "2", "--image-size", "24"),
    "pretrained": ("--image-size", "64"),
}


# ---------------------------------------------------------------------------------------------
# Writing the corpus


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_file(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written chunk by chunk: raw is the filtered scanlines (filter byte per row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A PNG of about 70 bytes whose header claims side x side RGB pixels."""
    return png_file(side, side, 8, 2, b"\0" * 64)


def rgb48_png(side: int, rgb: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG of one colour (Pillow cannot write these)."""
    row = b"\0" + struct.pack(">HHH", *rgb) * side
    return png_file(side, side, 16, 2, row * side)


def jpeg_bytes(img: Image.Image, quality: int = 90, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def gray16_ramp(side: int = 64) -> np.ndarray:
    """A left-to-right 16-bit ramp over the whole range 0..65535."""
    return np.tile(np.linspace(0, 65535, side).round().astype(np.uint16), (side, 1))


def big_photo(side: int = BIG_SIDE) -> Image.Image:
    """A large 'photo': sky, an orange sun in the middle, a green field. Drawn, not random,
    so it is quick to make and compresses to a few hundred KB."""
    img = Image.new("RGB", (side, side), (90, 140, 220))
    d = ImageDraw.Draw(img)
    d.rectangle((0, side * 3 // 4, side, side), fill=(40, 160, 60))
    r = side // 4
    d.ellipse((side // 2 - r, side // 2 - r, side // 2 + r, side // 2 + r), fill=(240, 150, 40))
    return img


def exif_rotated(side: int = 96) -> bytes:
    """Stored top half red, bottom half blue, tagged Orientation=6 (rotate 90° clockwise to
    display): upright, the red half is on the right."""
    img = Image.new("RGB", (side, side), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, side, side // 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(img, 95, exif=exif.tobytes())


@dataclass(frozen=True)
class Corpus:
    root: Path  # DATA: cats/ and dogs/, paths below are relative to it (posix, os.fsdecode)
    invalid: dict[str, str]  # unusable file -> what it is
    odd: dict[str, str]  # unusual but usable file -> what it is
    normal: frozenset[str]  # the plain conftest pictures
    hidden: frozenset[str]  # junk that every command must not even look at
    non_utf8: str | None  # the non-UTF-8 name (surrogate-escaped), None if the fs refused

    @property
    def readable(self) -> set[str]:
        return set(self.normal) | set(self.odd)

    def rel(self, path: str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def snapshot(self) -> dict[str, object]:
        """Every entry below root (outside .catnet/): bytes, link target or 'dir'."""
        state: dict[str, object] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != ".catnet"]
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                key = self.rel(str(path))
                if path.is_symlink():
                    state[key] = ("link", os.readlink(path))
                elif path.is_dir():
                    state[key] = "dir"
                else:
                    state[key] = path.read_bytes()
        return state


def build_corpus(root: Path) -> Corpus:
    data = make_dataset(root, n_per_class=12, size=24)
    normal = frozenset(Path(p).relative_to(data).as_posix() for p in data.glob("*/*.png"))
    cats, dogs = data / "cats", data / "dogs"
    invalid: dict[str, str] = {}
    odd: dict[str, str] = {}

    def write(rel: str, content: bytes, table: dict[str, str], what: str) -> None:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
        table[rel] = what

    # Unusable: training must skip these, name them and say why.
    write("cats/zero.jpg", b"", invalid, "zero-byte file")
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    whole = jpeg_bytes(Image.fromarray(noise))
    write("cats/truncated.jpg", whole[: len(whole) * 2 // 3], invalid, "truncated JPEG")
    write("dogs/text.jpg", b"<html>404 Not Found</html>\n", invalid, "text named .jpg")
    write("dogs/bomb.png", bomb_png(), invalid, f"PNG header claiming {BOMB_SIDE}x{BOMB_SIDE}")
    os.symlink("does_not_exist.jpg", cats / "broken_link.jpg")
    invalid["cats/broken_link.jpg"] = "broken symlink"
    os.symlink("loop_b.jpg", dogs / "loop_a.jpg")
    os.symlink("loop_a.jpg", dogs / "loop_b.jpg")
    invalid["dogs/loop_a.jpg"] = invalid["dogs/loop_b.jpg"] = "symlink loop"

    # Odd but usable: training must use every one of these.
    buf = io.BytesIO()
    draw_picture("cats", "png-named-jpg", 32).save(buf, "PNG")
    write("cats/png_named.jpg", buf.getvalue(), odd, "PNG named .jpg")
    write("cats/cmyk.jpg", jpeg_bytes(draw_picture("cats", "cmyk", 32).convert("CMYK")), odd,
          "CMYK JPEG")  # fmt: skip
    Image.fromarray(gray16_ramp()).save(dogs / "gray16.png")
    odd["dogs/gray16.png"] = "16-bit gray PNG"
    write("dogs/rgb48.png", rgb48_png(32, (0xFFFF, 0x8000, 0x0000)), odd, "16-bit RGB PNG")
    rgba = draw_picture("cats", "rgba", 32).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((32, 32)))
    rgba.save(cats / "rgba.png")
    odd["cats/rgba.png"] = "RGBA PNG"
    palette = draw_picture("dogs", "palette", 32).quantize(16)
    palette.save(dogs / "palette.png", transparency=0)
    odd["dogs/palette.png"] = "palette PNG with transparency"
    frames = [draw_picture("dogs", f"gif{i}", 32).quantize(32) for i in range(3)]
    frames[0].save(dogs / "animated.gif", save_all=True, append_images=frames[1:], duration=80)
    odd["dogs/animated.gif"] = "animated GIF"
    Image.new("RGB", (1, 1), (250, 200, 120)).save(cats / "one_pixel.png")
    odd["cats/one_pixel.png"] = "1x1 picture"
    write("cats/exif_rotated.jpg", exif_rotated(), odd, "EXIF Orientation=6 JPEG")
    write("dogs/big.jpg", jpeg_bytes(big_photo(), 70), odd, f"{BIG_SIDE}x{BIG_SIDE} JPEG")
    (cats / "odd.jpg").mkdir()  # a folder named like a picture is a folder: walked
    draw_picture("cats", "in-odd-folder", 24).save(cats / "odd.jpg" / "inside.png")
    odd["cats/odd.jpg/inside.png"] = "picture inside a folder named odd.jpg"
    (dogs / "empty.png").mkdir()  # ... and an empty one is simply nothing
    os.symlink("cats_0.png", cats / "good_link.png")
    odd["cats/good_link.png"] = "symlink to a good picture"
    # Odd names (usable pictures): the rows, CSVs and JSON that name them must stay valid.
    for name in ODD_NAMES:
        draw_picture("dogs", name, 24).save(dogs / name, "PNG")
        odd[f"dogs/{name}"] = f"odd file name {name!r}"
    draw_picture("dogs", "la", 24).convert("LA").save(dogs / "gray_alpha.png")
    odd["dogs/gray_alpha.png"] = "LA PNG (gray with alpha)"
    draw_picture("dogs", "1-bit", 24).convert("1").save(dogs / "one_bit.png")
    odd["dogs/one_bit.png"] = "1-bit PNG"
    non_utf8: str | None = None
    try:
        with open(os.path.join(os.fsencode(cats), NON_UTF8_NAME), "wb") as fh:
            fh.write(jpeg_bytes(draw_picture("cats", "cafe", 32)))
        non_utf8 = "cats/" + os.fsdecode(NON_UTF8_NAME)
        odd[non_utf8] = "non-UTF-8 file name"
    except OSError:  # e.g. a filesystem that insists on UTF-8 names
        pass

    # Hidden junk: never listed, never decoded, never reported.
    hidden = {".DS_Store", "cats/.DS_Store", "cats/._cat.jpg", "dogs/.thumbs/t.jpg"}
    for rel in hidden:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + b"\0" * 64)
    return Corpus(data, invalid, odd, normal, frozenset(hidden), non_utf8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Read-only: tests that change the folder work on a copy (copy_corpus)."""
    return build_corpus(tmp_path_factory.mktemp("bad_inputs") / "data")


def copy_corpus(corpus: Corpus, dest: Path) -> Corpus:
    shutil.copytree(corpus.root, dest, symlinks=True)  # links stay links, loops stay loops
    return Corpus(dest, corpus.invalid, corpus.odd, corpus.normal, corpus.hidden,
                  corpus.non_utf8)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The command line


@dataclass(frozen=True)
class Cli:
    base: Path  # working directory and home of the cache of these runs
    env: dict[str, str]

    def __call__(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """`python -m catnet ARGS` in a fresh interpreter. Output stays bytes: a non-UTF-8
        file name may be printed, and the test decides how to read it."""
        return subprocess.run(
            [sys.executable, "-m", "catnet", *map(str, args)],
            capture_output=True,
            timeout=TIMEOUT_S,
            cwd=self.base,
            env=env or self.env,
            check=False,
        )


def text(out: bytes) -> str:
    return out.decode("utf-8", "surrogateescape")


def flat(out: bytes) -> str:
    """Rich wraps tables at 80 columns in a pipe: compare words, not layout."""
    return " ".join(text(out).split())


def no_traceback(proc: subprocess.CompletedProcess[bytes]) -> str:
    report = f"exit {proc.returncode}\nstdout:\n{text(proc.stdout)}\nstderr:\n{text(proc.stderr)}"
    assert b"Traceback" not in proc.stderr and b"Traceback" not in proc.stdout, report
    return report


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """Module-scoped, so the autouse per-test isolation is not in place yet: give the runs
    their own cache and working directory explicitly."""
    base = tmp_path_factory.mktemp("bad_inputs_cli")
    env = {
        **os.environ,
        "CATNET_CACHE": str(base / "cache"),
        "XDG_CACHE_HOME": str(base / "xdg"),
        "COLUMNS": "200",
        # As in a desktop's en_US.UTF-8 locale: printing a non-UTF-8 name must not crash.
        # (C and C.UTF-8 make Python's stdout forgiving, which would hide such a crash.)
        "PYTHONIOENCODING": "utf-8:strict",
    }
    return Cli(base, env)


@dataclass(frozen=True)
class TrainRun:
    proc: subprocess.CompletedProcess[bytes]
    run_dir: Path


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained_on_corpus(corpus: Corpus, cli: Cli, request: pytest.FixtureRequest) -> TrainRun:
    """Every test that uses it runs with the CNN and with the default model."""
    run_dir = cli.base / f"run-{request.param}"
    proc = cli("train", corpus.root, "--epochs", "1", *MODELS[request.param],
               "--precision", "fp32", "--out", run_dir)  # fmt: skip
    return TrainRun(proc, run_dir)


def read_skipped(run_dir: Path) -> dict[str, str]:
    """skipped.txt: one 'path<TAB>reason' line per file, non-UTF-8 bytes kept as written."""
    raw = (run_dir / "skipped.txt").read_text(encoding="utf-8", errors="surrogateescape")
    rows = {}
    for line in raw.splitlines():
        path, sep, reason = line.partition("\t")
        assert sep, f"not path<TAB>reason: {line!r}"
        rows[path] = reason
    return rows


@pytest.mark.slow
def test_train_skips_exactly_the_unusable_files(
    corpus: Corpus, trained_on_corpus: TrainRun
) -> None:
    proc, run_dir = trained_on_corpus.proc, trained_on_corpus.run_dir
    report = no_traceback(proc)
    assert proc.returncode == 1, report  # done, but some files could not be read
    assert (run_dir / "best.pt").is_file(), report
    skipped = {corpus.rel(p): reason for p, reason in read_skipped(run_dir).items()}
    assert set(skipped) == set(corpus.invalid), report
    for rel, reason in skipped.items():
        assert reason.strip(), f"{rel} ({corpus.invalid[rel]}) skipped without a reason"
    # The summary says how many and where the list is.
    n = len(corpus.invalid)
    words = flat(proc.stderr)
    assert f"skipped {n} unreadable files" in words, report
    assert str(run_dir / "skipped.txt") in words, report


@pytest.mark.slow
def test_train_uses_every_odd_picture(corpus: Corpus, trained_on_corpus: TrainRun) -> None:
    skipped = {corpus.rel(p) for p in read_skipped(trained_on_corpus.run_dir)}
    used_odd = set(corpus.odd) - skipped
    assert used_odd == set(corpus.odd), {k: corpus.odd[k] for k in set(corpus.odd) & skipped}
    assert not skipped & set(corpus.hidden)


@pytest.mark.slow
def test_bomb_is_refused_by_the_pixel_limit(corpus: Corpus, trained_on_corpus: TrainRun) -> None:
    skipped = {corpus.rel(p): r for p, r in read_skipped(trained_on_corpus.run_dir).items()}
    assert "too many pixels" in skipped["dogs/bomb.png"]


@pytest.mark.slow
def test_train_and_check_give_the_same_reasons(
    corpus: Corpus, cli: Cli, trained_on_corpus: TrainRun
) -> None:
    """skipped.txt and `catnet check` describe each unusable file the same way, so a user can
    tell a link loop from a missing file without running both."""
    skipped = {corpus.rel(p): r for p, r in read_skipped(trained_on_corpus.run_dir).items()}
    _, found = run_check(cli, corpus.root)
    assert skipped == {u["path"]: u["reason"] for u in found["unreadable"]}


@pytest.mark.slow
def test_evaluate_counts_the_skipped_files(
    corpus: Corpus, cli: Cli, trained_on_corpus: TrainRun
) -> None:
    proc = cli("evaluate", trained_on_corpus.run_dir / "best.pt", corpus.root, "--json")
    report = no_traceback(proc)
    assert proc.returncode == 1, report  # done, but some files could not be read
    metrics = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert metrics["skipped"] == len(corpus.invalid), report
    assert metrics["n"] == len(corpus.readable), report


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


def check_prediction_rows(corpus: Corpus, rows: list[dict[str, str]]) -> None:
    by_path = {corpus.rel(r["path"]): r for r in rows}
    assert len(by_path) == len(rows), "a file was predicted twice"
    assert set(by_path) == corpus.readable | set(corpus.invalid)
    for row in rows:  # lossless: every path, non-UTF-8 included, names the file itself
        assert os.path.lexists(row["path"]), row
    for rel in corpus.invalid:
        row = by_path[rel]
        assert row["label"] == "error", (rel, row)
        assert row["error"], (rel, row)
        assert row["p_cat"] in ("", None), (rel, row)
    for rel in corpus.readable:
        row = by_path[rel]
        assert row["label"] in ("cat", "not_cat"), (rel, corpus.odd.get(rel), row)
        assert not row["error"], (rel, row)
        assert 0.0 <= float(row["p_cat"]) <= 1.0


@pytest.mark.slow
def test_predict_csv_has_a_row_for_every_file(
    corpus: Corpus, cli: Cli, trained_on_corpus: TrainRun
) -> None:
    out = cli.base / "rows.csv"
    proc = cli("predict", trained_on_corpus.run_dir / "best.pt", corpus.root, "-o", out)
    report = no_traceback(proc)
    assert proc.returncode == 1, report  # some files could not be read
    check_prediction_rows(corpus, read_rows(out))


@pytest.mark.slow
def test_predict_json_lines_parse(corpus: Corpus, cli: Cli, trained_on_corpus: TrainRun) -> None:
    proc = cli("predict", trained_on_corpus.run_dir / "best.pt", corpus.root, "--json")
    report = no_traceback(proc)
    assert proc.returncode == 1, report
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert all(isinstance(r, dict) for r in rows)
    check_prediction_rows(corpus, rows)


@pytest.mark.slow
def test_predict_plain_output_survives_a_non_utf8_name(
    corpus: Corpus, cli: Cli, trained_on_corpus: TrainRun
) -> None:
    """The table on stdout, with Python's strict stdout encoding (cli's env)."""
    if corpus.non_utf8 is None:
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    proc = cli("predict", trained_on_corpus.run_dir / "best.pt", corpus.root / "cats")
    report = no_traceback(proc)
    assert proc.returncode == 1, report
    shown = flat(proc.stdout)
    for rel in corpus.readable | set(corpus.invalid):
        if rel.startswith("cats/") and rel != corpus.non_utf8:
            assert str(corpus.root / rel) in shown, report  # every row, not only those before
    assert "caf" in shown and ".jpg" in shown, report


def run_check(
    cli: Cli, root: Path, *flags: str
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    proc = cli("check", root, "--json", *flags)
    report = no_traceback(proc)
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"check --json printed no JSON\n{report}")


@pytest.mark.slow
def test_check_reports_every_problem(corpus: Corpus, cli: Cli) -> None:
    proc, found = run_check(cli, corpus.root)
    assert proc.returncode == 1, text(proc.stderr)  # unreadable files present
    unreadable = {u["path"]: u["reason"] for u in found["unreadable"]}
    assert set(unreadable) == set(corpus.invalid)
    assert all(reason.strip() for reason in unreadable.values()), unreadable
    assert "too many pixels" in unreadable["dogs/bomb.png"]
    assert "loop" in unreadable["dogs/loop_a.jpg"]
    assert found["n_images"] == len(corpus.readable)
    assert {e["path"] for e in found["lying_extensions"]} == {"cats/png_named.jpg"}
    modes = {e["path"]: e["mode"] for e in found["odd_modes"]}
    assert modes["cats/cmyk.jpg"] == "CMYK"
    assert modes["dogs/gray16.png"].startswith("I")
    assert modes["cats/rgba.png"] == "RGBA"
    assert modes["dogs/palette.png"] == "P"
    assert modes["dogs/animated.gif"] == "P"
    tiny = {e["path"]: (e["width"], e["height"]) for e in found["tiny"]}
    assert tiny["cats/one_pixel.png"] == (1, 1)
    assert "dogs/big.jpg" not in tiny
    listed = {f for section in ("odd_modes", "tiny", "lying_extensions")
              for f in (e["path"] for e in found[section])}  # fmt: skip
    assert not listed & set(corpus.hidden)


@pytest.mark.slow
def test_check_plain_text_report(corpus: Corpus, cli: Cli) -> None:
    proc = cli("check", corpus.root)
    report = no_traceback(proc)
    assert proc.returncode == 1, report
    for rel in ("cats/zero.jpg", "dogs/bomb.png", "dogs/loop_b.jpg"):
        assert rel in text(proc.stdout), report


@pytest.mark.slow
def test_check_fix_moves_only_unusable_files_and_undo_restores(
    corpus: Corpus, cli: Cli, tmp_path: Path
) -> None:
    mine = copy_corpus(corpus, tmp_path / "data")
    before = mine.snapshot()
    proc, _ = run_check(cli, mine.root, "--fix")
    assert proc.returncode == 0, text(proc.stderr)
    quarantine = mine.root / ".catnet" / "quarantine"
    after = mine.snapshot()
    assert set(before) - set(after) == set(mine.invalid)  # moved: the unusable, nothing else
    assert set(after) <= set(before)
    for rel, state in after.items():
        assert state == before[rel], f"{rel} changed"
    for rel in mine.invalid:  # moved, never deleted: same bytes, links still links
        moved = quarantine / rel
        assert os.path.lexists(moved), rel
        if moved.is_symlink():
            assert before[rel] == ("link", os.readlink(moved)), rel
        else:
            assert before[rel] == moved.read_bytes(), rel
    manifest = json.loads((quarantine / "manifest.json").read_text())
    assert {e["original"] for e in manifest["entries"]} == set(mine.invalid)

    proc, found = run_check(cli, mine.root)
    assert proc.returncode == 0, text(proc.stderr)
    assert found["unreadable"] == []
    assert found["n_images"] == len(mine.readable)

    undo = cli("check", mine.root, "--undo")
    report = no_traceback(undo)
    assert undo.returncode == 0, report
    assert f"put back {len(mine.invalid)} files" in flat(undo.stderr), report
    assert mine.snapshot() == before
    proc, found = run_check(cli, mine.root)
    assert proc.returncode == 1
    assert {u["path"] for u in found["unreadable"]} == set(mine.invalid)


@pytest.mark.slow
def test_check_and_decode_agree_on_the_pixel_limit(cli: Cli, tmp_path: Path) -> None:
    """A 100-megapixel photo is under catnet's 120 MP limit: decode_square (train, evaluate,
    predict) uses it, so check must not call it unreadable, nor --fix quarantine it. Pillow's
    own default limit (89.5 MP) must not decide in a fresh `catnet check` process."""
    data = make_dataset(tmp_path / "data", n_per_class=2, size=24)
    big = data / "cats" / "hundred_mp.jpg"
    Image.new("L", (10_000, 10_000), 128).save(big, "JPEG", quality=50)
    assert decode_square(big, 24).shape == (24, 24, 3)  # what train / predict see
    _, found = run_check(cli, data, "--fix")
    assert found["unreadable"] == [], found["unreadable"]
    assert big.is_file(), "check --fix quarantined a picture that training uses"


@pytest.mark.slow
def test_explain_names_every_file_in_valid_rows(
    corpus: Corpus, trained_on_corpus: TrainRun, tmp_path: Path
) -> None:
    """In-process: what matters here is the rows (JSON on stdout, index.csv), not the process."""
    from typer.testing import CliRunner

    from catnet.cli import app

    out = tmp_path / "explained"
    best = trained_on_corpus.run_dir / "best.pt"
    result = CliRunner().invoke(app, ["explain", str(best), str(corpus.root), "--out", str(out),
                                      "--json"])  # fmt: skip
    assert result.exit_code == 1, result.output  # some files could not be read
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    indexed = read_rows(out / "index.csv")
    for table in (rows, indexed):
        by_input = {corpus.rel(r["path"]): r for r in table}
        assert len(by_input) == len(table) and set(by_input) == corpus.readable | set(
            corpus.invalid
        )
        for rel, row in by_input.items():
            if rel in corpus.invalid:
                assert row["label"] == "error" and row["error"] and not row["output"], row
            else:
                assert row["label"] in ("cat", "not_cat") and not row["error"], row
                assert Path(row["output"]).is_file(), row


def browser_query(path: str) -> str:
    """What a browser's URLSearchParams sends for a name with non-UTF-8 bytes (surrogate
    escapes in the JSON the page read): U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in path)


@pytest.mark.slow
def test_label_page_lists_shows_and_tags_every_odd_file(
    corpus: Corpus, trained_on_corpus: TrainRun, tmp_path: Path
) -> None:
    """The labelling page (Starlette TestClient, in-process) with a DATA_DIR full of broken
    files and an untagged folder holding every kind of them: every request answers (JSON that
    parses, or a clear refusal), never a server error, and every file can be tagged."""
    from starlette.testclient import TestClient

    from catnet.config import LabelConfig
    from catnet.labelling.app import create_app
    from catnet.labelling.pictures import OVERLAY_LONGEST
    from catnet.labelling.session import open_session

    mine = copy_corpus(corpus, tmp_path / "data")
    untagged = mine.root / "unlabeled"
    shutil.copytree(corpus.root / "dogs", untagged, symlinks=True)
    if corpus.non_utf8:  # the odd names, odd modes and broken files of cats/ and dogs/ alike
        shutil.copy(corpus.root / corpus.non_utf8, untagged)
    session = open_session(mine.root, LabelConfig(out=str(tmp_path / "runs")),
                           trained_on_corpus.run_dir / "best.pt")  # fmt: skip
    session.rank()
    client = TestClient(create_app(session, "t", "127.0.0.1", 1), base_url="http://127.0.0.1:1",
                        raise_server_exceptions=False)  # fmt: skip
    head = {"x-catnet-token": "t", "content-type": "application/json"}
    review = client.get("/api/queue", params={"kind": "review", "token": "t"})
    assert review.status_code == 200, review.text
    queue = client.get("/api/queue", params={"token": "t"})
    assert queue.status_code == 200, queue.text
    items = queue.json()["items"]
    listed = {item["path"] for item in items}
    expected = {rel.removeprefix("dogs/") for rel in corpus.readable | set(corpus.invalid)
                if rel.startswith("dogs/") and "/" not in rel.removeprefix("dogs/")}  # fmt: skip
    if corpus.non_utf8:
        expected.add(Path(corpus.non_utf8).name)
    assert listed >= expected - {"loop_a.jpg", "loop_b.jpg"}, sorted(expected - listed)
    for item in items:
        query = {"root": "unlabeled", "path": browser_query(item["path"]), "token": "t"}
        answers = {
            route: client.get(route, params=query) for route in ("/api/picture", "/api/heatmap")
        }
        for route, answer in answers.items():
            assert answer.status_code < 500, (route, item["path"], answer.text)
        if (untagged / item["path"]).is_file() and "\ufffd" not in query["path"]:
            heat = answers["/api/heatmap"]  # one map a picture: each takes a backward pass
            readable = f"dogs/{item['path']}" in corpus.readable
            assert heat.status_code == (200 if readable else 409), (item["path"], heat.text)
            if readable:  # the 8000 px photo's overlay too: at most OVERLAY_LONGEST px
                side = max(Image.open(io.BytesIO(heat.content)).size)
                assert side <= OVERLAY_LONGEST, (item["path"], side)
        there = (untagged / item["path"]).exists()  # False for a broken link, a link loop
        # A JSON body keeps the name exactly (surrogate escapes), as the page's fetch sends it.
        tagged = client.post("/api/label", headers=head,
                             content=json.dumps({"path": item["path"], "label": "cat"}))  # fmt: skip
        if there:
            assert tagged.status_code == 200, (item["path"], tagged.text)
            assert not os.path.lexists(untagged / item["path"]), item["path"]
        else:  # refused with a reason, and left in place
            assert tagged.status_code == 404 and tagged.json()["error"], (item, tagged.text)
    left = client.get("/api/queue", params={"token": "t"}).json()["items"]
    assert {i["path"] for i in left} == {"broken_link.jpg", "loop_a.jpg", "loop_b.jpg"} & listed


# ---------------------------------------------------------------------------------------------
# decode_square, file by file


def decode_error(path: Path, size: int = 24) -> str:
    with pytest.raises(DecodeError) as info:
        decode_square(path, size)
    return info.value.reason


EXPECTED_REASON = {  # the words a person needs to see
    "cats/zero.jpg": ("empty",),
    "cats/truncated.jpg": ("truncated",),
    "dogs/text.jpg": ("not a picture",),
    "dogs/bomb.png": ("too many pixels",),
    "cats/broken_link.jpg": ("not found", "link"),
    "dogs/loop_a.jpg": ("not found", "loop", "link"),
    "dogs/loop_b.jpg": ("not found", "loop", "link"),
}


def test_decode_reasons_are_short_and_human(corpus: Corpus) -> None:
    assert set(EXPECTED_REASON) == set(corpus.invalid)
    for rel, words in EXPECTED_REASON.items():
        reason = decode_error(corpus.root / rel)
        assert 0 < len(reason) <= 80, (rel, reason)
        assert "\n" not in reason and "Traceback" not in reason, (rel, reason)
        assert " object at 0x" not in reason and str(corpus.root) not in reason, (rel, reason)
        assert any(w in reason for w in words), (rel, reason)


def test_decode_every_odd_picture(corpus: Corpus) -> None:
    for rel in corpus.odd:
        out = decode_square(corpus.root / rel, 24)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8, rel


def test_decode_folder_named_like_a_picture(corpus: Corpus) -> None:
    assert "regular file" in decode_error(corpus.root / "cats" / "odd.jpg")
    assert "regular file" in decode_error(corpus.root / "dogs" / "empty.png")


MEMORY_PROBE = """
import resource, sys
from catnet.data.pixels import decode_square
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_square(sys.argv[1], int(sys.argv[2]), max_pixels=int(sys.argv[3]))
    outcome = "ok"
except Exception as exc:
    outcome = type(exc).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, (after - before) / 1024)  # ru_maxrss is in KiB on Linux
"""


def peak_memory_growth_mb(path: Path, size: int, max_pixels: int) -> str:
    """'OUTCOME MB': decode_square in a fresh interpreter, and how far its peak resident memory
    rose above what importing took (a memory bound instead of a wall-clock one)."""
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), str(size), str(max_pixels)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


@pytest.mark.slow  # peak_memory_growth_mb starts fresh interpreters
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ off Linux")
def test_decode_bomb_is_refused_from_the_header(corpus: Corpus) -> None:
    path = corpus.root / "dogs" / "bomb.png"
    data = path.read_bytes()
    assert len(data) < 200
    assert struct.unpack(">II", data[16:24]) == (BOMB_SIDE, BOMB_SIDE)
    # 3.6 GP is over twice the first limit (Pillow's error) and between 1x and 2x the second
    # (Pillow's warning, which decode_square must turn into a refusal too).
    for limit in (120_000_000, 2_000_000_000):
        with pytest.raises(DecodeError, match="too many pixels"):
            decode_square(path, 24, max_pixels=limit)
        # ... before any pixel was decoded: the 10.8 GB were never allocated nor inflated.
        grown = peak_memory_growth_mb(path, 24, limit)
        assert grown.startswith("DecodeError") and float(grown.split()[-1]) < 32, grown


def test_decode_16_bit_is_rescaled_not_clipped(corpus: Corpus) -> None:
    path = corpus.root / "dogs" / "gray16.png"
    assert Image.open(path).mode == "I;16"
    out = decode_square(path, 64).astype(int)  # same size: no resampling blur
    expected = np.round(gray16_ramp()[0] / 65535 * 255).astype(int)
    assert np.abs(out[32, :, 0] - expected).max() <= 2, out[32, :, 0]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out[32] < 250).sum() > 50  # clipping would make almost every pixel white
    rgb = decode_square(corpus.root / "dogs" / "rgb48.png", 8).astype(int)
    assert np.abs(rgb - np.array([255, 128, 0])).max() <= 1, rgb[0, 0]


def test_decode_exif_rotation_is_applied(corpus: Corpus) -> None:
    out = decode_square(corpus.root / "cats" / "exif_rotated.jpg", 24).astype(int)
    left, right = out[:, :10].mean(axis=(0, 1)), out[:, 14:].mean(axis=(0, 1))
    assert right[0] > 200 and right[2] < 60, right  # red on the right once upright
    assert left[2] > 200 and left[0] < 60, left  # blue on the left
    top, bottom = out[:10].mean(axis=(0, 1)), out[14:].mean(axis=(0, 1))
    assert np.abs(top - bottom).max() < 30  # as stored (red top, blue bottom) would fail this


@pytest.mark.slow  # peak_memory_growth_mb starts a fresh interpreter
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ off Linux")
def test_decode_big_photo_in_little_memory(corpus: Corpus) -> None:
    path = corpus.root / "dogs" / "big.jpg"
    with Image.open(path) as img:
        assert img.size == (BIG_SIDE, BIG_SIDE)
    out = decode_square(path, 24).astype(int)
    # Draft mode: libjpeg decodes at 1/8 scale (1000x1000, 3 MB), not the whole 192 MB picture.
    grown = peak_memory_growth_mb(path, 24, 120_000_000)
    assert grown.startswith("ok") and float(grown.split()[-1]) < 64, grown
    assert np.abs(out[12, 12] - np.array([240, 150, 40])).max() < 30, out[12, 12]  # the sun
    assert np.abs(out[1, 1] - np.array([90, 140, 220])).max() < 30, out[1, 1]  # the sky
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_square(path, 24, max_pixels=BIG_SIDE * BIG_SIDE - 1)


def test_decode_animated_gif_uses_the_first_frame(corpus: Corpus) -> None:
    path = corpus.root / "dogs" / "animated.gif"
    with Image.open(path) as img:
        assert getattr(img, "n_frames", 1) == 3
        first = np.asarray(img.convert("RGB").resize((24, 24), Image.Resampling.BILINEAR))
    out = decode_square(path, 24)
    assert np.abs(out.astype(int) - first.astype(int)).mean() < 12


def test_decode_non_utf8_name(corpus: Corpus) -> None:
    if corpus.non_utf8 is None:
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    path = corpus.root / corpus.non_utf8
    assert os.fsencode(path).endswith(NON_UTF8_NAME)
    assert decode_square(path, 24).shape == (24, 24, 3)
    assert decode_square(os.fsdecode(os.fsencode(path)), 24).shape == (24, 24, 3)


def test_decode_one_pixel_and_transparency(corpus: Corpus) -> None:
    one = decode_square(corpus.root / "cats" / "one_pixel.png", 24)
    assert (one == np.array([250, 200, 120], dtype=np.uint8)).all()
    # The alpha gradient runs from transparent (top) to opaque: the top row is on white.
    rgba = decode_square(corpus.root / "cats" / "rgba.png", 32).astype(int)
    assert rgba[0].min() >= 240, rgba[0]
