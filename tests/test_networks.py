"""The inference model with batch norm folded into the convolutions gives the logits of the
unfolded model, for both networks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from catnet.models.networks import build_model, fuse_for_inference

ARCHS: dict[str, dict[str, Any]] = {
    "cnn": {"type": "cnn", "image_size": 24, "width": 8, "depth": 2, "activation": "relu",
            "dropout": 0.3},
    "mlp": {"type": "mlp", "image_size": 24, "hidden": [32, 16], "activation": "gelu",
            "dropout": 0.3},
}  # fmt: skip


def trained_looking(arch: dict[str, Any], seed: int) -> nn.Module:
    """A model whose batch norms hold statistics and affine weights far from their initial
    1s and 0s (a fresh BN in eval mode is nearly the identity, and would fold trivially), and
    whose logits spread over several units, as a trained model's do."""
    torch.manual_seed(seed)
    model = build_model(arch)
    output = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    output.weight.data.mul_(30)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c))
            module.running_var.copy_(torch.rand(c) * 3 + 0.1)
            module.weight.data.copy_(torch.randn(c))
            module.bias.data.copy_(torch.randn(c))
    return model.eval()


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_folded_model_gives_the_same_logits(kind: str) -> None:
    model = trained_looking(ARCHS[kind], seed=0)
    folded = fuse_for_inference(copy.deepcopy(model))
    assert not folded.training
    batches = [torch.randn(16, 3, 24, 24, generator=torch.Generator().manual_seed(s))
               for s in range(3)]  # fmt: skip
    with torch.no_grad():
        for x in batches:
            want, got = model(x), folded(x)
            assert got.shape == want.shape == (16,)
            assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
            assert want.std() > 0.1  # the logits differ per picture: the comparison means something
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in folded.modules())
    assert bns == 0  # every batch norm was folded away...
    assert convs == sum(isinstance(m, nn.Conv2d) for m in model.modules())  # ...into its conv
    if kind == "cnn":
        assert convs > 0 and all(
            m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d)
        )
