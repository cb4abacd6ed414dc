"""Heatmaps for the mistakes `catnet evaluate --report` shows: where the network looked when it
gave its wrong answer, as self-contained data: URIs next to each thumbnail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catnet.data.pixels import decode_square
from catnet.errors import DecodeError
from catnet.explaining.explain import explainer_for, on_picture
from catnet.explaining.heatmaps import data_uri, overlay
from catnet.predicting.prediction import load_model


def heatmap_uris(
    checkpoint: str | Path, mistakes: list[tuple[Path, bool]], side: int, batch_size: int = 32
) -> list[str]:
    """One JPEG data: URI per (path, answered cat) mistake: its side x side px thumbnail with
    the map of the evidence for the wrong answer it got (the negative logit's for a cat called
    not-cat); "" where the file cannot be read any more."""
    model = load_model(checkpoint)
    explainer = explainer_for(model)
    uris = [""] * len(mistakes)
    readable: list[int] = []
    squares: list[np.ndarray] = []
    for i, (path, _) in enumerate(mistakes):
        try:
            squares.append(decode_square(path, model.decode_size))
            readable.append(i)
        except DecodeError:
            continue
    for start in range(0, len(readable), batch_size):
        part = readable[start : start + batch_size]
        batch = torch.from_numpy(np.stack(squares[start : start + batch_size]))
        sign = torch.tensor([1.0 if mistakes[i][1] else -1.0 for i in part])
        for i, cam, pixels in zip(part, explainer.maps(batch, sign), batch, strict=True):
            thumb = Image.fromarray(pixels.numpy()).resize((side, side), Image.BILINEAR)
            heat = on_picture(cam, side, side)
            uris[i] = data_uri(overlay(thumb, heat, (0, 0, side)), "JPEG")
    return uris
