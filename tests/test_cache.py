"""The decoded-picture cache: decode once, reuse, notice changes, survive corruption."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import catnet.data.decoding
from catnet.data.cache import (
    CACHE_VERSION,
    PixelTable,
    cache_size_for,
    cache_usage,
    default_cache_root,
    load_pixels,
)
from catnet.data.decoding import Decoded

SIZE = 8


class DecodeSpy:
    """Counts the files decode_square is asked for (load_pixels with workers=1 decodes in
    this process, so a monkeypatched _decode_task sees every one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = catnet.data.decoding._decode_task

        def spy(task: tuple[str, int, int]) -> Decoded:
            self.paths.append(task[0])
            return real(task)

        monkeypatch.setattr(catnet.data.decoding, "_decode_task", spy)

    def take(self) -> list[str]:
        out, self.paths = self.paths, []
        return out


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> DecodeSpy:
    return DecodeSpy(monkeypatch)


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "pics"
    folder.mkdir()
    out = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0)]):
        path = folder / f"p{i}.png"
        Image.new("RGB", (12, 12), color).save(path)
        out.append(path)
    return out


def load(paths: list[Path], root: Path) -> PixelTable:
    return load_pixels(paths, SIZE, cache_root=root, workers=1)


def index_of(root: Path) -> dict:
    return json.loads((root / f"v{CACHE_VERSION}-s{SIZE}" / "index.json").read_text())


def slot_of(root: Path, path: Path) -> int | str:
    entries = index_of(root)["entries"]
    matches = [v for k, v in entries.items() if k.split("|")[0] == str(path.resolve())]
    assert len(matches) == 1, matches
    return matches[0]


def color_of(table: PixelTable, i: int) -> tuple[int, ...]:
    return tuple(int(c) for c in table.array[table.slots[i]][SIZE // 2, SIZE // 2])


def rewrite(path: Path, color: tuple[int, int, int]) -> None:
    """New content and a clearly later mtime (the size may well be the same)."""
    before = path.stat()
    Image.new("RGB", (12, 12), color).save(path, "PNG")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def cache_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cache"


def test_first_load_decodes_everything_second_nothing(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    first = load(pictures, cache_root)
    assert sorted(spy.take()) == sorted(str(p.resolve()) for p in pictures)
    second = load(pictures, cache_root)
    assert spy.take() == []
    assert np.array_equal(first.slots, second.slots)
    for i in range(len(pictures)):
        assert np.array_equal(first.array[first.slots[i]], second.array[second.slots[i]])
    assert color_of(second, 0) == (255, 0, 0)
    assert color_of(second, 2) == (0, 0, 255)
    assert isinstance(second.array, np.memmap)


def test_pixels_match_uncached_decoding(pictures: list[Path], cache_root: Path) -> None:
    cached = load(pictures, cache_root)
    plain = load_pixels(pictures, SIZE, cache_root=None, workers=1)
    for i in range(len(pictures)):
        assert np.array_equal(cached.array[cached.slots[i]], plain.array[plain.slots[i]])


def test_changed_file_gets_a_new_slot_others_keep_theirs(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    load(pictures, cache_root)
    spy.take()
    before = {p: slot_of(cache_root, p) for p in pictures}
    rewrite(pictures[1], (10, 20, 30))
    table = load(pictures, cache_root)
    assert spy.take() == [str(pictures[1].resolve())]
    after = {p: slot_of(cache_root, p) for p in pictures}
    assert after[pictures[1]] not in before.values()
    for p in (pictures[0], pictures[2], pictures[3]):
        assert after[p] == before[p]
    assert color_of(table, 1) == (10, 20, 30)
    assert color_of(table, 0) == (255, 0, 0)
    assert len(index_of(cache_root)["entries"]) == len(pictures)  # the stale entry is gone


def test_added_file_is_decoded_alone(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    load(pictures[:3], cache_root)
    spy.take()
    table = load(pictures, cache_root)
    assert spy.take() == [str(pictures[3].resolve())]
    assert color_of(table, 3) == (200, 200, 0)


def test_removed_file_entry_is_dropped(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    load(pictures, cache_root)
    pictures[2].unlink()
    rest = [pictures[0], pictures[1], pictures[3]]
    spy.take()
    table = load(rest, cache_root)
    assert spy.take() == []
    keys = [k.split("|")[0] for k in index_of(cache_root)["entries"]]
    assert str(pictures[2].resolve()) not in keys
    assert len(keys) == 3
    assert color_of(table, 2) == (200, 200, 0)


def test_a_listed_file_that_vanished_is_an_error_row(
    pictures: list[Path], cache_root: Path
) -> None:
    pictures[0].unlink()
    table = load(pictures, cache_root)
    assert table.slots[0] == -1 and "not found" in table.errors[0]
    assert table.ok.tolist() == [False, True, True, True]


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong_slots", "missing"])
def test_corrupt_index_is_rebuilt(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy, damage: str
) -> None:
    load(pictures, cache_root)
    index = cache_root / f"v{CACHE_VERSION}-s{SIZE}" / "index.json"
    if damage == "garbage":
        index.write_text("{not json")
    elif damage == "empty":
        index.write_text("")
    elif damage == "wrong_slots":
        data = json.loads(index.read_text())
        data["entries"] = {k: 999 for k in data["entries"]}
        index.write_text(json.dumps(data))
    else:
        index.unlink()
    spy.take()
    table = load(pictures, cache_root)
    assert len(spy.take()) == len(pictures)  # decoded again, not trusted
    assert table.ok.all()
    assert [color_of(table, i) for i in (0, 1, 2)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert load(pictures, cache_root).ok.all() and spy.take() == []  # and healthy again


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_pixel_file_is_rebuilt(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy, damage: str
) -> None:
    load(pictures, cache_root)
    pixels = cache_root / f"v{CACHE_VERSION}-s{SIZE}" / "pixels.u8"
    size = pixels.stat().st_size
    if damage == "truncated":
        os.truncate(pixels, size - 7)
    else:
        pixels.unlink()
    spy.take()
    table = load(pictures, cache_root)
    assert len(spy.take()) == len(pictures)
    assert color_of(table, 1) == (0, 255, 0)
    assert color_of(table, 3) == (200, 200, 0)


def test_bytes_past_the_index_are_cut_off(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    """A run killed (or out of space) mid-append leaves slots no index entry points at: they
    are cut off, and every indexed picture is still served without decoding it again."""
    load(pictures, cache_root)
    pixels = cache_root / f"v{CACHE_VERSION}-s{SIZE}" / "pixels.u8"
    size = pixels.stat().st_size
    with pixels.open("ab") as fh:
        fh.write(b"\0" * (SIZE * SIZE * 3 + 5))  # one whole slot and part of the next
    spy.take()
    table = load(pictures, cache_root)
    assert spy.take() == []
    assert pixels.stat().st_size == size
    assert color_of(table, 1) == (0, 255, 0)
    assert color_of(table, 3) == (200, 200, 0)


def test_decode_errors_are_remembered(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    bad = pictures[0].parent / "bad.jpg"
    bad.write_text("not a picture")
    empty = pictures[0].parent / "empty.png"
    empty.touch()
    paths = [*pictures, bad, empty]
    first = load(paths, cache_root)
    assert set(first.errors) == {4, 5}
    assert "not a picture" in first.errors[4] and "empty" in first.errors[5]
    assert str(slot_of(cache_root, bad)).startswith("!")
    spy.take()
    second = load(paths, cache_root)
    assert spy.take() == []  # not re-read
    assert second.errors == first.errors
    assert second.slots[4] == second.slots[5] == -1


def test_fixed_file_is_decoded_again(
    pictures: list[Path], cache_root: Path, spy: DecodeSpy
) -> None:
    bad = pictures[0].parent / "fixme.png"
    bad.write_text("oops")
    assert load([bad], cache_root).errors
    Image.new("RGB", (12, 12), (1, 2, 3)).save(bad, "PNG")
    spy.take()
    table = load([bad], cache_root)
    assert spy.take() == [str(bad.resolve())]
    assert not table.errors and color_of(table, 0) == (1, 2, 3)


def test_sizes_have_separate_caches(pictures: list[Path], cache_root: Path) -> None:
    load(pictures, cache_root)
    other = load_pixels(pictures, 12, cache_root=cache_root, workers=1)
    assert other.array.shape[1:] == (12, 12, 3)
    assert {p.name for p in cache_root.iterdir()} == {
        f"v{CACHE_VERSION}-s8",
        f"v{CACHE_VERSION}-s12",
    }


def test_cache_size_has_margin_and_is_a_multiple_of_4() -> None:
    for size in (16, 24, 32, 64, 96):
        s = cache_size_for(size)
        assert s >= size and s % 4 == 0


def test_default_root_follows_catnet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATNET_CACHE", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here"
    monkeypatch.delenv("CATNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "catnet"


def test_cli_cache_info_and_clear(pictures: list[Path]) -> None:
    from catnet.cli import app

    root = default_cache_root()
    load_pixels(pictures, SIZE, cache_root=root, workers=1)
    assert cache_usage(root)[2] == len(pictures)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0, info.output
    assert "4 pictures" in " ".join(info.output.split())  # Rich may wrap long paths
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0, cleared.output
    assert "removed" in cleared.output
    assert not root.exists()
    again = runner.invoke(app, ["cache", "clear"])  # nothing to clear is fine
    assert again.exit_code == 0, again.output


def test_path_with_a_pipe_character(tmp_path: Path, cache_root: Path) -> None:
    path = tmp_path / "a|b.png"
    Image.new("RGB", (12, 12), (9, 8, 7)).save(path)
    table = load([path], cache_root)
    assert table.errors == {}
    assert color_of(table, 0) == (9, 8, 7)


def test_pixel_file_is_compacted_when_most_of_it_is_dead(tmp_path: Path, cache_root: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for i in range(300):
        path = folder / f"{i:03d}.png"
        Image.new("RGB", (4, 4), (i % 256, i // 256, 7)).save(path)
        paths.append(path)
    load(paths, cache_root)
    pixels = cache_root / f"v{CACHE_VERSION}-s{SIZE}" / "pixels.u8"
    assert pixels.stat().st_size == 300 * SIZE * SIZE * 3
    for path in paths[:200]:
        path.unlink()
    kept = paths[200:]
    table = load(kept, cache_root)
    assert pixels.stat().st_size == 100 * SIZE * SIZE * 3  # dead slots reclaimed
    assert sorted(table.slots.tolist()) == list(range(100))
    for i, path in enumerate(kept):
        n = int(path.stem)
        assert color_of(table, i) == (n % 256, n // 256, 7)
    again = load(kept, cache_root)  # and the compacted index is consistent on disk
    assert np.array_equal(again.slots, table.slots)
