"""`catnet info`: see inside a checkpoint — layers of neurons, what it learnt from, how well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint
from catnet.models.networks import CNN, MLP, count_parameters, network_from

REGULARIZERS = (
    "weight_decay",
    "patience",
    "min_delta",
    "lr_schedule",
    "warmup",
    "augment",
    "dropout",
)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_layers(model: MLP, arch: dict[str, Any]) -> list[dict[str, Any]]:
    size = arch["image_size"]
    layers = [{"layer": "input", "kind": "pixels", "units": 3 * size * size, "shape": f"3x{size}x{size}",
               "activation": "", "parameters": 0}]  # fmt: skip
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        last = i == len(linears) - 1
        layers.append({
            "layer": "output" if last else f"hidden {i + 1}",
            "kind": "dense",
            "units": linear.out_features,
            "shape": f"{linear.in_features} -> {linear.out_features}",
            "activation": "sigmoid (p(cat))" if last else arch["activation"],
            "parameters": _params(linear),
        })  # fmt: skip
    return layers


def cnn_layers(model: CNN, arch: dict[str, Any]) -> list[dict[str, Any]]:
    size = arch["image_size"]
    layers = [{"layer": "input", "kind": "pixels", "units": 3 * size * size, "shape": f"3x{size}x{size}",
               "activation": "", "parameters": 0}]  # fmt: skip
    side = size
    blocks = list(model.features)
    layers.append(_conv_row("stem", blocks[0], side, arch))
    for stage, i in enumerate(range(1, len(blocks), 3), start=1):
        conv, _pool, residual = blocks[i : i + 3]
        side //= 2
        layers.append(_conv_row(f"hidden {stage}: conv + pool", conv, side, arch))
        layers.append(_conv_row(f"hidden {stage}: residual pair", residual, side, arch))
    layers.append({
        "layer": "output", "kind": "pool, dropout, dense", "units": 1,
        "shape": f"{model.head.in_features} -> 1", "activation": "sigmoid (p(cat))",
        "parameters": _params(model.head),
    })  # fmt: skip
    return layers


def pretrained_layers(model: nn.Module, arch: dict[str, Any]) -> list[dict[str, Any]]:
    """Input, the backbone's stem and stages (frozen or trained), its last conv, the new head;
    shapes from one forward pass of a blank picture."""
    import torch

    size, trained = arch["image_size"], int(arch.get("train_stages", 0))
    b, n = model.backbone, model.n_stages()
    layers = [{"layer": "input", "kind": "pixels", "units": 3 * size * size,
               "shape": f"3x{size}x{size}", "activation": "", "parameters": 0}]  # fmt: skip
    if n == 0:  # a backbone without stages: one row for all of it
        parts = [("backbone (frozen)", "pretrained", b, lambda x: b(x))]
    else:
        parts = [("stem (frozen)", "conv+BN", nn.ModuleList([b.conv_stem, b.bn1]),
                  lambda x: b.bn1(b.conv_stem(x)))]  # fmt: skip
        for i, stage in enumerate(b.blocks):
            state = "trained" if i >= n - trained else "frozen"
            parts.append((f"stage {i + 1} ({state})", f"{len(stage)} conv blocks", stage, stage))
        state = "trained" if trained else "frozen"
        parts.append((f"last conv + pool ({state})", "conv1x1+BN, avg pool",
                      nn.ModuleList([b.conv_head, b.bn2]),
                      lambda x: b.forward_head(b.bn2(b.conv_head(x)), pre_logits=True)))  # fmt: skip
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        for name, kind, module, run in parts:
            x = run(x)
            layers.append({"layer": name, "kind": kind, "units": x[0].numel(),
                           "shape": "x".join(map(str, x.shape[1:])), "activation": "",
                           "parameters": _params(module)})  # fmt: skip
    layers.append({"layer": "output (trained)", "kind": "dropout, dense", "units": 1,
                   "shape": f"{model.head.in_features} -> 1", "activation": "sigmoid (p(cat))",
                   "parameters": _params(model.head)})  # fmt: skip
    return layers


def _conv_row(name: str, block: nn.Module, side: int, arch: dict[str, Any]) -> dict[str, Any]:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[-1].out_channels
    return {
        "layer": name,
        "kind": f"{len(convs)}x conv3x3+BN",
        "units": channels * side * side,
        "shape": f"{channels}x{side}x{side}",
        "activation": arch["activation"],
        "parameters": _params(block),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Everything `catnet info` shows, as plain data (also what --json prints)."""
    payload = load_checkpoint(path)
    arch = payload["arch"]
    model = network_from(payload)
    by_type = {"mlp": mlp_layers, "cnn": cnn_layers, "pretrained": pretrained_layers}
    layers = by_type[arch["type"]](model, arch)  # type: ignore[operator]
    total = count_parameters(model)
    assert sum(row["parameters"] for row in layers) == total, "layer table misses parameters"
    cfg = payload.get("train_config", {})
    return {
        "checkpoint": str(path),
        "model": arch["type"],
        "layers": layers,
        "total_parameters": total,
        "input": {
            "image_size": payload["preprocessing"]["image_size"],
            "train_image_size": payload["preprocessing"].get(
                "train_image_size", payload["preprocessing"]["image_size"]
            ),
            "decode_size": payload["preprocessing"]["decode_size"],
            "mean": payload["preprocessing"]["mean"],
            "std": payload["preprocessing"]["std"],
        },
        "classes": payload["classes"],
        "data": payload.get("data_summary", {}),
        "regularizers": {k: cfg[k] for k in REGULARIZERS if k in cfg},
        "training": {k: cfg.get(k) for k in ("epochs", "time_budget", "lr", "batch_size", "seed")},
        "epochs_trained": payload.get("epoch"),
        "threshold": payload["threshold"],
        "temperature": payload.get("temperature", 1.0),
        "metrics": payload.get("metrics", {}),
        "open_set": _open_set(payload.get("open_set")),
        "catnet_version": payload.get("catnet_version"),
    }


def _open_set(entry: Any) -> dict[str, Any] | None:
    """The open-set check: on by default or not, and what it did on validation (scoring.openset
    .Verdict; None: fitted before verdicts); None: the checkpoint has none."""
    if not isinstance(entry, dict):
        return None
    return {"on": bool(entry.get("on", True)), "validation": entry.get("validation")}


def first_layer_weights(path: str | Path) -> Any:
    """An MLP's first hidden layer as pictures: (n_neurons, 3, S, S) float32 numpy, each
    neuron's weight for each input pixel and colour. Only an MLP has one weight per pixel; a
    conv layer's 3x3 filters are not pictures of anything."""
    payload = load_checkpoint(path)
    arch = payload["arch"]
    if arch["type"] != "mlp":
        raise CatnetError(
            f"--neurons draws an MLP's first-layer neurons; {path} is a {arch['type']}",
            hint="for a CNN, `catnet explain` shows where it looks",
        )
    size = int(arch["image_size"])
    weight = payload["state_dict"]["net.1.weight"]  # (n_hidden, 3 * S * S): Flatten, then Linear
    return weight.float().reshape(-1, 3, size, size).numpy()
