"""Which feature maps a heatmap is made from: the last convolutional stage (Grad-CAM's) and,
where that stage is coarse, the stride-8 map that sharpens it (LayerCAM's). Both are found by
running the network once on a blank picture with hooks (conv_stages), so any network with 4-D feature maps
works (catnet's CNN, a timm backbone) without naming its modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Input pixels per position of the map LayerCAM sharpens with: 28 x 28 at 224 px. Chosen on the
# dev photos (scripts/compare_explain_maps.py): stride 16 (14 x 14) gained less in the deletion
# test on every split.
FINE_STRIDE = 8


@dataclass(frozen=True)
class ConvStages:
    """What a heatmap is made from (see conv_stages)."""

    last: nn.Module | None  # the last convolutional stage; None without feature maps (MLP)
    last_side: int  # its output map's side in positions (0 without)
    fine: nn.Module | None  # the module whose input is the stride-8 map, where that is finer


def conv_stages(net: nn.Module, image_size: int, stride: int = FINE_STRIDE) -> ConvStages:
    """Both stages, from one forward pass of a blank picture.

    The last stage: of the modules whose output is a 4-D feature map with more than one
    position, the last to finish its forward pass. For catnet's CNN that is `features` (the
    map before global pooling); for a timm backbone it is the block after `conv_head` (global
    pooling's (B, C, 1, 1) output has one position and does not count).

    The fine stage: the first module to take a map of side image_size / stride (rounded either
    way: a max-pool rounds down, a padded strided conv up) and return a smaller one. For
    tf_efficientnet_lite0 at 224 px that is blocks.3, whose input is blocks.2's 28 x 28 output;
    for a depth-4 CNN at 72 px, the last max-pool (9 x 9 in). None where the last stage is
    already that fine (catnet's default CNN: 9 x 9 at 72 px) or nothing downsamples from that
    side."""
    sides = {image_size // stride, -(-image_size // stride)}  # floor, ceil
    finished: list[tuple[nn.Module, int]] = []
    downsampling: list[nn.Module] = []

    def note(module: nn.Module, inputs: Any, output: Any) -> None:
        if not (isinstance(output, torch.Tensor) and output.dim() == 4):
            return
        if output[0, 0].numel() > 1:
            finished.append((module, output.shape[-1]))
        first = inputs[0] if inputs else None
        if (
            isinstance(first, torch.Tensor) and first.dim() == 4 and first.shape[-1] in sides
            and output.shape[-1] < first.shape[-1]
        ):  # fmt: skip
            downsampling.append(module)

    # Pre-hooks run in call order, so the first call that downsamples from the stride-8 side is
    # found before its children (blocks.3 before blocks.3.0); forward hooks list children first.
    calls: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _i: calls.append(m)) for m in net.modules()]
    handles += [m.register_forward_hook(note) for m in net.modules() if m is not net]
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    last, last_side = finished[-1] if finished else (None, 0)
    coarse = last is not None and last_side < min(sides)
    fine = min(downsampling, key=calls.index) if coarse and downsampling else None
    return ConvStages(last, last_side, fine)


def feature_layer(net: nn.Module, image_size: int) -> nn.Module | None:
    """The last convolutional stage (see conv_stages); None for the MLP."""
    return conv_stages(net, image_size).last


def fine_layer(net: nn.Module, image_size: int, stride: int = FINE_STRIDE) -> nn.Module | None:
    """The module whose input is the stride-8 map, where that is finer (see conv_stages)."""
    return conv_stages(net, image_size, stride).fine
