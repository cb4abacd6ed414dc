"""Batched preprocessing and augmentation on tensors, not per-picture PIL work.

Input batches are uint8 (B, S, S, 3) straight from the pixel cache; outputs are normalised
float (B, 3, H, W). One affine warp per picture does crop, scale, aspect, rotation and flip in a
single grid_sample, so augmentation costs about as much as one extra conv layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ImageNet statistics: a neutral, well-known choice that works for any photo collection.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentSettings:
    crop_scale: float = 0.35  # smallest crop area, as a share of the picture
    rotation: float = 10.0  # degrees, either way
    color_jitter: float = 0.3  # max relative change of brightness, contrast and saturation
    flip: bool = True


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1], channels_last in memory."""
    return batch_u8.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def prepare_eval(
    batch_u8: torch.Tensor, image_size: int, mean: tuple = MEAN, std: tuple = STD
) -> torch.Tensor:
    """The deterministic view used by validation, evaluate and predict: resize, normalise."""
    x = to_float(batch_u8)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return normalize(x, mean, std).contiguous(memory_format=torch.channels_last)


def _affine(batch: int, settings: AugmentSettings, gen: torch.Generator) -> torch.Tensor:
    """(B, 2, 3) sampling matrices in normalised coordinates: a random resized crop, rotated."""
    u = torch.rand(batch, 5, generator=gen)
    area = settings.crop_scale + (1 - settings.crop_scale) * u[:, 0]
    log_ratio = (u[:, 1] * 2 - 1) * math.log(4 / 3)  # aspect ratio in [3/4, 4/3]
    # ... narrowed where the crop is so large that a side would stick out (|log ratio| at most
    # -log area): the crop keeps its sampled area, and crop_scale=1 means no crop at all.
    log_ratio = torch.maximum(torch.minimum(log_ratio, -area.log()), area.log())
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # width, as a share of the picture's
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    angle = (u[:, 2] * 2 - 1) * math.radians(settings.rotation)
    tx = (u[:, 3] * 2 - 1) * (1 - sx)  # keep the crop inside the picture
    ty = (u[:, 4] * 2 - 1) * (1 - sy)
    flip = torch.ones(batch)
    if settings.flip:
        flip = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([sx * cos * flip, -sy * sin, tx], dim=1),
            torch.stack([sx * sin * flip, sy * cos, ty], dim=1),
        ],
        dim=1,
    )
    return theta


def _jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-picture brightness, contrast and saturation factors in [1-s, 1+s]."""
    if strength <= 0:
        return x
    b = x.shape[0]
    f = 1 + (torch.rand(b, 3, 1, 1, 1, generator=gen) * 2 - 1) * strength
    f = f.to(x.device)
    x = x * f[:, 0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[:, 1] + mean
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - gray) * f[:, 2] + gray
    return x.clamp_(0.0, 1.0)


def augment(
    batch_u8: torch.Tensor,
    image_size: int,
    settings: AugmentSettings,
    gen: torch.Generator,
    mean: tuple = MEAN,
    std: tuple = STD,
) -> torch.Tensor:
    """Random training view of a uint8 batch -> normalised (B, 3, image_size, image_size)."""
    x = to_float(batch_u8)
    b = x.shape[0]
    theta = _affine(b, settings, gen).to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, 3, image_size, image_size], align_corners=False)
    if x.shape[-1] > 2 * image_size:  # avoid aliasing when the source is much larger
        x = F.interpolate(x, size=(2 * image_size, 2 * image_size), mode="bilinear", antialias=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = _jitter(x, settings.color_jitter, gen)
    return normalize(x, mean, std).contiguous(memory_format=torch.channels_last)


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): paste one random box from a shuffled copy of the batch into
    every picture and mix the targets by the pasted area. x: (B, 3, H, W); targets: (B,) float.

    Why: with ~2,000 photos the network soon memorises whole pictures; a picture that is part
    cat, part dog, labelled by the share of each, keeps every part of it informative."""
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen).to(x.device)
    keep = float(torch.rand(1, generator=gen))  # share of the picture kept, Uniform = Beta(1, 1)
    cut_h, cut_w = round(h * math.sqrt(1 - keep)), round(w * math.sqrt(1 - keep))
    top = int(torch.randint(0, h - cut_h + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - cut_w + 1, (1,), generator=gen))
    mixed = x.clone()
    mixed[:, :, top : top + cut_h, left : left + cut_w] = x[
        perm, :, top : top + cut_h, left : left + cut_w
    ]
    pasted = cut_h * cut_w / (h * w)
    return mixed, targets * (1 - pasted) + targets[perm] * pasted
