"""A network's forward pass on uint8 pictures, without gradients: the one place where decoded
squares become logits, for training's validation, calibration, evaluate and predict."""

from __future__ import annotations

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
    """Logits for pixels[slots], batch by batch (pixels may be a memory-mapped cache)."""
    model.eval()
    out = []
    for part in batches_of(len(slots), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(pixels[slots[part]]))
        out.append(logits_for(model, batch, image_size, compute, tta, mean, std))
    return torch.cat(out) if out else torch.zeros(0)
