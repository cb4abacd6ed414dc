"""The two networks. Both map a normalised batch (B, 3, H, W) to one logit per picture (B,);
p(cat) = sigmoid(logit / temperature).

An architecture is described by a plain dict (stored in checkpoints), so a model can be rebuilt
from a checkpoint without unpickling any code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class MLP(nn.Module):
    """The textbook network: every pixel is an input neuron, then fully connected hidden layers
    of neurons with an activation function, then one output neuron."""

    def __init__(
        self, image_size: int, hidden: list[int], activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = 3 * image_size * image_size  # input layer: one neuron per pixel and colour
        for n_out in hidden:
            layers += [nn.Linear(n_in, n_out), ACTIVATION_LAYERS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            n_in = n_out
        layers.append(nn.Linear(n_in, 1))  # output layer: one neuron, the cat logit
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def conv_bn(c_in: int, c_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        ACTIVATION_LAYERS[activation](),
    )


class Residual(nn.Module):
    """Two conv layers whose output is added to their input: gradients get a short path back."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels, activation), conv_bn(channels, channels, activation)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CNN(nn.Module):
    """Stem, then `depth` stages of (conv, 2x2 max-pool, residual pair); each stage doubles the
    channels and halves the resolution. Global average and max pooling, dropout, one output."""

    def __init__(
        self, width: int = 32, depth: int = 3, activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = [conv_bn(3, width, activation)]
        c_in = width
        for i in range(depth):
            c_out = width * 2**i
            stages += [
                conv_bn(c_in, c_out, activation),
                nn.MaxPool2d(2),
                Residual(c_out, activation),
            ]
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c_in, 1)  # avg- and max-pooled features side by side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, C, H/2^depth, W/2^depth)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return self.head(self.dropout(pooled)).squeeze(1)


def architecture_from_config(cfg: Any, image_size: int) -> dict[str, Any]:
    """The plain-dict description of the network a TrainConfig asks for."""
    if cfg.model == "pretrained":
        from catnet.models.pretrained import DEFAULT_BACKBONE

        return {
            "type": "pretrained",
            "backbone": cfg.backbone or DEFAULT_BACKBONE,
            "image_size": image_size,
            "dropout": cfg.dropout,
            "train_stages": cfg.train_stages,
        }
    if cfg.model == "mlp":
        return {
            "type": "mlp",
            "image_size": image_size,
            "hidden": list(cfg.hidden),
            "activation": cfg.activation,
            "dropout": cfg.dropout,
        }
    return {
        "type": "cnn",
        "image_size": image_size,
        "width": cfg.width,
        "depth": cfg.depth,
        "activation": cfg.activation,
        "dropout": cfg.dropout,
    }


def build_model(arch: dict[str, Any]) -> nn.Module:
    if arch["type"] == "mlp":
        return MLP(arch["image_size"], list(arch["hidden"]), arch["activation"], arch["dropout"])
    if arch["type"] == "cnn":
        return CNN(arch["width"], arch["depth"], arch["activation"], arch["dropout"])
    if arch["type"] == "pretrained":  # timm's architecture code, random weights: no download
        from catnet.models.pretrained import build_pretrained

        return build_pretrained(arch)
    raise ValueError(f"unknown model type {arch['type']!r}")


def network_from(payload: dict[str, Any]) -> nn.Module:
    """A checkpoint's network with its trained weights (on the CPU, in train mode): the one
    way from a checkpoint (models.checkpoint.load_checkpoint) to a module."""
    model = build_model(payload["arch"])
    model.load_state_dict(payload["state_dict"])
    return model


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the conv before it (eval mode only): the same outputs up to
    rounding, one pass over the activations instead of two. Used by predict and evaluate."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) >= 2:
            conv, bn = module[0], module[1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[0] = fuse_conv_bn_eval(conv, bn)
                module[1] = nn.Identity()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
