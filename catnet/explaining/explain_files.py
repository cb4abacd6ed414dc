"""`catnet explain` on files: decode a window ahead (as predict does), compute the maps batch by
batch, write one PNG per picture at a path mirroring the input's, an index.csv and a contact
sheet. Rows go to a callback as soon as they exist; an unreadable file is an error row."""

from __future__ import annotations

import csv
import glob
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catnet.config import ExplainConfig, PredictConfig
from catnet.data.decoding import Decoded
from catnet.errors import CatnetError
from catnet.explaining import heatmaps
from catnet.explaining.explain import Explainer, crop_box, explainer_for, on_picture
from catnet.predicting.network_model import CatnetModel
from catnet.predicting.outputs import csv_value, inputs_outside
from catnet.predicting.readahead import DecodeAhead
from catnet.runtime.compute import setup_threads
from catnet.scoring.decision import Decision


@dataclass
class ExplainRow:
    path: str  # the picture, named as in every row catnet writes
    output: str  # the PNG written, "" for an error row
    p_cat: float | None
    label: str  # predict's answer: cat, not_cat, or error
    explained: str  # which side the map shows: cat or not_cat ("" for an error row)
    method: str  # grad-cam, grad-cam x layercam or saliency (explain.METHODS)
    error: str = ""
    # As in predict's rows: the open-set check's flag (None: not checked) and score.
    unfamiliar: bool | None = None
    unfamiliar_score: float | None = None
    # The threshold the answer was made with, as in predict's rows: `correct --from` reads the
    # model's answer back from p_cat and it, whatever the user wrote in label.
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        p = None if self.p_cat is None else round(self.p_cat, 6)
        score = None if self.unfamiliar_score is None else round(self.unfamiliar_score, 6)
        return {**self.__dict__, "p_cat": p, "unfamiliar_score": score}


COLUMNS = tuple(ExplainRow.__dataclass_fields__)  # index.csv: each field, in order, a column


def output_root(inputs: Iterable[str]) -> Path:
    """Where the outputs' relative paths start: the deepest folder holding every input (a
    folder as given, a file's folder, a glob's fixed part; a missing file only gives an error
    row). cats/1.jpg and dogs/1.jpg under it keep their folders, so never overwrite each other."""
    anchors = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            anchors.append(os.path.abspath(path))
        elif glob.has_magic(item) and not path.exists():
            fixed = [part for part in _until_magic(path.parts)]
            anchors.append(os.path.abspath(Path(*fixed)) if fixed else os.getcwd())
        elif path.exists() or path.is_symlink():
            anchors.append(os.path.abspath(path.parent))
    return Path(os.path.commonpath(anchors)) if anchors else Path.cwd()


def _until_magic(parts: tuple[str, ...]) -> Iterator[str]:
    for part in parts:
        if glob.has_magic(part):
            return
        yield part


def output_for(path: Path, root: Path, out: Path) -> Path:
    """out/<path relative to root>.png: the input's own suffix stays in the name, so 1.jpg
    and 1.png in one folder get different outputs."""
    return out / (os.path.relpath(os.path.abspath(path), root) + ".png")


def explain_files(
    model: CatnetModel,
    inputs: list[str],
    out: Path,
    cfg: ExplainConfig | None = None,
    on_row: Callable[[ExplainRow], None] | None = None,
) -> dict[str, Any]:
    """Explain every picture in inputs into out/. Returns a summary: counts per label, errors,
    the index and contact sheet paths, the method, and images/s over the whole run."""
    cfg = cfg or ExplainConfig()
    setup_threads()
    started = time.perf_counter()
    explainer = explainer_for(model)
    decision = model.decision(cfg.threshold)
    root, out = output_root(inputs), Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatnetError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    files = inputs_outside(inputs, out)  # a rerun must not explain its own earlier output
    decode_cfg = PredictConfig(
        batch_size=cfg.batch_size, workers=cfg.workers, max_image_pixels=cfg.max_image_pixels
    )
    counts = {"cat": 0, "not_cat": 0, "error": 0}  # explain has no unsure band
    cells: list[Image.Image] = []
    index = out / "index.csv"
    with (
        index.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh,
        DecodeAhead(files, model.decode_size, decode_cfg) as reader,
    ):
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        while True:
            chunk, results = reader.take()
            if not chunk:
                break
            for start in range(0, len(chunk), cfg.batch_size):
                part = slice(start, start + cfg.batch_size)
                for row, cell in _explain_batch(
                    explainer, chunk[part], results[part], root, out, cfg, decision
                ):
                    counts[row.label] += 1
                    writer.writerow({k: csv_value(v) for k, v in row.as_dict().items()})
                    if cell is not None and len(cells) < cfg.sheet_max:
                        cells.append(cell)
                    if on_row:
                        on_row(row)
            fh.flush()
            reader.start_next()
    n = sum(counts.values())
    sheet = _write_sheet(cells, n, out, explainer) if cells else None
    seconds = time.perf_counter() - started
    return {
        "counts": counts, "errors": counts["error"], "pictures": n, "index": str(index),
        "contact_sheet": str(sheet) if sheet else None, "method": explainer.method,
        "note": explainer.note, "seconds": seconds, "images_per_s": n / max(seconds, 1e-9),
        "model": model.hash,
    }  # fmt: skip


def _explain_batch(
    explainer: Explainer,
    paths: list[Path],
    results: list[Decoded],
    root: Path,
    out: Path,
    cfg: ExplainConfig,
    decision: Decision,
) -> Iterator[tuple[ExplainRow, Image.Image | None]]:
    """Rows (and contact sheet cells) for one batch of decoded results (no pixels = failed)."""
    s = explainer.model.decode_size
    good = [i for i, r in enumerate(results) if r.pixels is not None]
    explained = None
    if good:
        pixels = np.stack([np.frombuffer(results[i].pixels, np.uint8) for i in good])
        batch = torch.from_numpy(pixels.reshape(len(good), s, s, 3))
        explained = explainer.explain(batch, cfg.target, decision)
    where = {i: j for j, i in enumerate(good)}
    for i, (path, result) in enumerate(zip(paths, results, strict=True)):
        if explained is None or result.pixels is None:
            yield (
                ExplainRow(str(path), "", None, "error", "", explainer.method, result.reason),
                None,
            )
            continue
        j = where[i]
        answer = explained.answers[j]
        caption = heatmaps.Caption(
            answer.p_cat, answer.label, explained.sides[j], explainer.method, str(path)
        )
        try:
            overlaid = _overlay(path, explained.maps[j])
        except Exception as exc:  # changed or vanished since it was decoded: one error row
            error = f"unreadable when drawing: {type(exc).__name__}: {exc}"
            yield ExplainRow(str(path), "", None, "error", "", explainer.method, error), None
            continue
        picture = heatmaps.captioned(overlaid, caption.lines())
        target = heatmaps.save_png(picture, output_for(path, root, out))
        row = ExplainRow(str(path), str(target), caption.p_cat, caption.label, caption.side,
                         explainer.method, "", answer.unfamiliar, answer.score,
                         decision.threshold)  # fmt: skip
        yield row, heatmaps.cell(overlaid, caption) if cfg.sheet_max else None


def _overlay(path: Path, cam: torch.Tensor) -> Image.Image:
    """The picture at display size with its map over the part the network saw."""
    picture = heatmaps.open_display(path)
    heat = on_picture(cam, picture.width, picture.height)
    return heatmaps.overlay(picture, heat, crop_box(picture.width, picture.height))


def _write_sheet(cells: list[Image.Image], n: int, out: Path, explainer: Explainer) -> Path:
    shown = f"{len(cells)} of {n} pictures" if n > len(cells) else f"{n} pictures"
    title = f"catnet explain, model {explainer.model.hash}: {shown}; {explainer.note}"
    return heatmaps.save_png(heatmaps.contact_sheet(cells, title), out / "contact_sheet.png")
