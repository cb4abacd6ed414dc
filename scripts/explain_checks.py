"""Do the maps mean something? The two standard checks, shared by the tests and
scripts/benchmark_explain.py.

- Deletion (ROAD-style): grey out the 20 % of pixels a map ranks highest and measure how much the
  probability of the predicted class drops, against greying out 20 % at random. A map that
  points at the evidence costs the network more.
- Randomisation (Adebayo et al., 2018): re-initialise every weight at random; the maps must
  change (low rank correlation with the trained model's maps). A map that survives is an
  edge detector, not an explanation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from catnet.data.augment import MEAN, prepare_eval
from catnet.errors import CatnetError
from catnet.explaining.explain import Explainer

GREY = tuple(round(255 * m) for m in MEAN)  # the average colour: normalised input 0


def top_mask(scores: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(B, S, S) scores -> (B, S, S) bool, True on exactly round(fraction * S * S) pixels per
    picture, the highest scores; ties (a map's flat zeros) are broken at random."""
    b, s, _ = scores.shape
    k = round(fraction * s * s)
    jitter = torch.rand(scores.shape, generator=generator) * 1e-6
    order = (scores.float() + jitter).flatten(1).argsort(dim=1, descending=True)
    mask = torch.zeros(b, s * s, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(b, s, s)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) -> (B, size, size), bilinear, the way the maps are drawn."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")[:, 0]


def grey_out(batch_u8: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 with the masked pixels set to the average colour."""
    out = batch_u8.clone()
    out[mask] = torch.tensor(GREY, dtype=torch.uint8)
    return out


def blur_out(batch_u8: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 with the masked pixels replaced by a strong blur of the picture
    (sigma S/8): their detail is gone but no new colour or edge is added, which a flat grey
    patch or grey dots can be (the ROAD paper's objection to constant fills)."""
    from torchvision.transforms.functional import gaussian_blur

    s = batch_u8.shape[1]
    sigma = s / 8
    kernel = 2 * round(2 * sigma) + 1
    blurred = gaussian_blur(batch_u8.permute(0, 3, 1, 2).float(), [kernel, kernel], [sigma, sigma])
    out = batch_u8.clone()
    out[mask] = blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)[mask]
    return out


FILLS = {"grey": grey_out, "blur": blur_out}


def class_probability(
    explainer: Explainer, batch_u8: torch.Tensor, cat: torch.Tensor
) -> torch.Tensor:
    """(B,) probability of each picture's given class (cat: (B,) bool), single view (no TTA):
    the view the map explains."""
    return torch.sigmoid(class_logit(explainer, batch_u8, cat))


def class_logit(explainer: Explainer, batch_u8: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
    """(B,) calibrated logit of each picture's given class (+logit / T for cat, -logit / T for
    not_cat), single view: sigmoid of it is class_probability. Unlike the probability it does
    not saturate, so it still moves where a very sure model stays at p ~ 1."""
    model = explainer.model
    logits = model.logits_and_scores(batch_u8, tta=False, open_set=False)[0] / model.temperature
    logits = torch.from_numpy(logits)  # the model answers in NumPy (engine or not)
    return torch.where(cat, logits, -logits)


@dataclass
class Deletion:
    """One batch's deletion test: (B,) drops per mask ("heatmap", "random_cells",
    "random_pixels") in the predicted class's probability (the target's measure) and in its
    calibrated logit (secondary), and which pictures the network called cat."""

    probability: dict[str, torch.Tensor]
    logit: dict[str, torch.Tensor]
    cat: torch.Tensor  # (B,) bool


def deletion_test(
    explainer: Explainer,
    batch_u8: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
    fill: str = "grey",
) -> Deletion:
    """Grey out `fraction` of the pixels: ranked by the map ("heatmap"), at random in cells the
    size of the map's cells ("random_cells", the same granularity as the map), and at random
    pixel by pixel ("random_pixels"). fill: grey (the average colour) or blur (see blur_out)."""
    s = batch_u8.shape[1]
    explained = explainer.explain(batch_u8)
    cat = torch.tensor([label == "cat" for label in explained.labels])
    before = class_logit(explainer, batch_u8, cat)
    maps = explained.maps
    cells = upsample(torch.rand(maps.shape, generator=generator), s)
    pixels = torch.rand(batch_u8.shape[:3], generator=generator)
    masks = {
        "heatmap": top_mask(upsample(maps, s), fraction, generator),
        "random_cells": top_mask(cells, fraction, generator),
        "random_pixels": top_mask(pixels, fraction, generator),
    }
    after = {
        name: class_logit(explainer, FILLS[fill](batch_u8, mask), cat)
        for name, mask in masks.items()
    }
    return Deletion(
        {name: torch.sigmoid(before) - torch.sigmoid(a) for name, a in after.items()},
        {name: before - a for name, a in after.items()},
        cat,
    )


def deletion_drops(
    explainer: Explainer,
    batch_u8: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
    fill: str = "grey",
) -> dict[str, torch.Tensor]:
    """(B,) drops in the predicted class's probability per mask (see deletion_test)."""
    return deletion_test(explainer, batch_u8, fraction, generator, fill).probability


def randomised(net: nn.Module, seed: int = 0, calibration: torch.Tensor | None = None) -> nn.Module:
    """A copy of the network with every layer re-initialised at random (its own init).

    calibration: a normalised batch (B, 3, S, S) on which batch norm re-measures its running
    statistics. Without it they reset to mean 0, variance 1, which a deep random network does
    not have: activations blow up or die from layer to layer, ReLU6 clips them flat, the
    gradients vanish and every map comes out empty. An empty map correlates with nothing, so
    the check would pass without testing anything (measured: all 32 Grad-CAM maps of the
    randomised pretrained backbone were empty)."""
    torch.manual_seed(seed)
    copied = copy.deepcopy(net)
    for module in copied.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    copied.eval()
    if calibration is not None:
        norms = [m for m in copied.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.momentum = None  # a plain average over the calibration pass
            norm.train()
        try:
            with torch.no_grad():
                copied(calibration)
        except ValueError as exc:  # one value per channel: a batch of one at a 1 x 1 stage
            raise CatnetError(
                f"cannot calibrate the randomised network on this batch: {exc}"
            ) from None
        for norm in norms:
            norm.eval()
    return copied


def empty_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, h, w) -> (B,) bool: True where a map is constant (nothing ranked)."""
    flat = maps.flatten(1)
    return flat.amax(1) - flat.amin(1) < 1e-9


def ranks(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) ranks with ties given their average rank (as Spearman needs)."""
    out = torch.empty_like(x, dtype=torch.float64)
    for row, values in enumerate(x.double()):
        sorted_values, order = values.sort()
        _, inverse, counts = torch.unique_consecutive(
            sorted_values, return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()
        average = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
        out[row, order] = average[inverse]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rank correlation per row of two (B, ...) map batches; 0 where a map is constant (an
    empty map has no ranking to agree with)."""
    ra, rb = ranks(a.flatten(1)), ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)
    return ((ra * rb).sum(1) / denominator).float()


def randomisation_correlation(
    explainer: Explainer, batch_u8: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rank correlation between the trained network's maps and those of the same network
    re-initialised at random (batch norm calibrated on this batch), each explaining the
    trained network's answer; and (B,) bool, where the random network's map is empty (its
    correlation of 0 then tests nothing: callers report these and leave them out)."""
    trained = explainer.explain(batch_u8)
    sign = torch.tensor([1.0 if side == "cat" else -1.0 for side in trained.sides])
    model = explainer.model
    x = prepare_eval(batch_u8.to(model.compute.device), model.image_size, model.mean, model.std)
    shuffled = Explainer(model, randomised(explainer.net, seed, x), explainer.fine_stride)
    random_maps = shuffled.maps(batch_u8, sign)
    return spearman(trained.maps, random_maps), empty_maps(random_maps)
