"""A network's forward pass on uint8 pictures, without gradients: the one place where decoded
squares become logits, for training's validation, calibration, evaluate and predict; and the one
way to walk a table of pictures (a cache, a window of decoded files) batch by batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from catnet.data.augment import MEAN, STD, prepare_eval
from catnet.runtime.compute import Compute, batches_of


@torch.no_grad()
def logits_for(
    model: nn.Module,
    batch_u8: torch.Tensor,
    image_size: int,
    compute: Compute,
    tta: bool = False,
    mean: tuple = MEAN,
    std: tuple = STD,
) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B,) float32 logits; with tta, the mean over the mirror image too."""
    x = prepare_eval(batch_u8.to(compute.device), image_size, mean, std)
    with compute.autocast():
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(3)).float()) / 2
    return logits.cpu()


def pixel_batches(pixels: np.ndarray, slots: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """pixels[slots] as (b, S, S, 3) uint8 tensors of up to batch_size pictures, in order
    (pixels may be a memory-mapped cache: only one batch is read at a time)."""
    for part in batches_of(len(slots), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(pixels[slots[part]]))


def predict_logits(
    model: nn.Module,
    pixels: np.ndarray,
    slots: np.ndarray,
    image_size: int,
    compute: Compute,
    batch_size: int = 128,
    tta: bool = False,
    mean: tuple = MEAN,
    std: tuple = STD,
) -> torch.Tensor:
    """Logits (n,) for pixels[slots], batch by batch."""
    model.eval()
    out = [
        logits_for(model, batch, image_size, compute, tta, mean, std)
        for batch in pixel_batches(pixels, slots, batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)
