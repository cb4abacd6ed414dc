"""Which map passes the deletion test best on a pretrained (timm tf_efficientnet_lite0)
checkpoint? Map variants compared on the same pictures and the same random masks.

    python scripts/compare_explain_maps.py CHECKPOINT HELD_OUT_DIR [--n 400] [--sanity 64]

Variants (each map scaled to a maximum of 1): Grad-CAM on `bn2` (the last stage, 7 x 7 at
224 px), Grad-CAM++ on `bn2`, LayerCAM (positive gradients x activations, per position) on
`blocks.4` (14 x 14), on `blocks.2` (28 x 28) and averaged over `bn2` + `blocks.4`, and Grad-CAM on
`bn2` times LayerCAM on `blocks.4` or `blocks.2`, or Grad-CAM on `blocks.4` (the square root
of the product, the geometric mean; ranked as the product). The
last row is catnet's own map (Explainer.maps), which should equal Grad-CAM x LayerCAM on
`blocks.2`. Printed: the mean drop in the predicted class's probability and logit after
greying out each map's top 20 %, against 20 % random 7 x 7 cells and random pixels; with
--sanity N, each map's rank correlation with the randomised network's (batch norm calibrated,
three seeds) on the first N pictures. A research script: nothing is asserted (see README,
"Explain: do the heatmaps mean something?").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import explain_checks as checks  # noqa: E402
from benchmark_explain import decode, pick  # noqa: E402

from catnet.data.augment import prepare_eval  # noqa: E402
from catnet.explaining.explain import Explainer  # noqa: E402
from catnet.predicting.prediction import load_model  # noqa: E402


def unit_max(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def activations_and_gradients(net, layers: dict, x: torch.Tensor, sign: torch.Tensor) -> dict:
    """{name: (A (B, C, h, w), d(sign * logit)/dA)} for every layer, from one backward pass."""
    kept: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            kept[name] = output
            return output.clone()  # later in-place activations must not touch what we keep

        return keep

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with torch.enable_grad():
            logits = net(x.detach().requires_grad_(True)).float()
            names = list(kept)
            grads = torch.autograd.grad((logits * sign).sum(), [kept[n] for n in names])
    finally:
        for handle in handles:
            handle.remove()
    return {n: (kept[n].detach().float(), g.float()) for n, g in zip(names, grads, strict=True)}


def grad_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))


def layer_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return F.relu((F.relu(g) * a).sum(1))


def grad_cam_pp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., 2018), its closed form for an exponential score."""
    denominator = 2 * g**2 + (a * g**3).sum((2, 3), keepdim=True)
    alpha = g**2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return F.relu(((alpha * F.relu(g)).sum((2, 3), keepdim=True) * a).sum(1))


def up(m: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(m[:, None], size=(side, side), mode="bilinear")[:, 0]


def variants(explainer: Explainer, batch: torch.Tensor, sign: torch.Tensor) -> dict:
    model, backbone = explainer.model, explainer.net.backbone
    layers = {"bn2": backbone.bn2, "b4": backbone.blocks[4], "b2": backbone.blocks[2]}
    x = prepare_eval(batch, model.image_size, model.mean, model.std)
    seen = activations_and_gradients(explainer.net, layers, x, sign)
    cam = {n: grad_cam(*v) for n, v in seen.items()}
    lc = {n: layer_cam(*v) for n, v in seen.items()}

    def sharpened(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        return unit_max(torch.sqrt(unit_max(up(coarse, fine.shape[-1])) * unit_max(fine)))

    average = unit_max(
        sum(unit_max(up(m, lc["b4"].shape[-1])) for m in (layer_cam(*seen["bn2"]), lc["b4"]))
    )
    return {
        "grad-cam bn2": cam["bn2"],
        "grad-cam++ bn2": unit_max(grad_cam_pp(*seen["bn2"])),
        "layercam bn2 + blocks.4, averaged": average,
        "layercam blocks.4": lc["b4"],
        "layercam blocks.2": lc["b2"],
        "grad-cam bn2 x grad-cam blocks.4": sharpened(cam["bn2"], cam["b4"]),
        "grad-cam bn2 x layercam blocks.4": sharpened(cam["bn2"], lc["b4"]),
        "grad-cam bn2 x layercam blocks.2": sharpened(cam["bn2"], lc["b2"]),
        "catnet (Explainer.maps)": explainer.maps(batch, sign),
    }


def sanity(explainer: Explainer, pixels: torch.Tensor) -> None:
    """Mean rank correlation of each variant's maps with those of the network re-initialised at
    random (three seeds, batch norm calibrated on the batch), explaining the trained network's
    answers (target < 0.5); empty random maps are counted and left out."""
    rhos: dict[str, list[torch.Tensor]] = {}
    empties: dict[str, int] = {}
    model = explainer.model
    for seed in range(3):
        for start in range(0, len(pixels), 32):
            batch = pixels[start : start + 32]
            x = prepare_eval(batch, model.image_size, model.mean, model.std)
            shuffled = Explainer(model, checks.randomised(explainer.net, seed, x))
            sign = torch.tensor(
                [1.0 if s == "cat" else -1.0 for s in explainer.explain(batch).sides]
            )
            trained, random = variants(explainer, batch, sign), variants(shuffled, batch, sign)
            for name in trained:
                empty = checks.empty_maps(random[name])
                rhos.setdefault(name, []).append(
                    checks.spearman(trained[name], random[name])[~empty]
                )
                empties[name] = empties.get(name, 0) + int(empty.sum())
    for name, values in rhos.items():
        print(f"sanity | {name} | mean rho {torch.cat(values).mean():.3f} | empty {empties[name]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument(
        "--sanity", type=int, default=0, help="pictures for the randomisation check"
    )
    args = parser.parse_args()
    model = load_model(args.checkpoint, "cpu")
    explainer = Explainer(model)
    _, pixels = decode(pick(args.data, args.n, 0), model.decode_size)
    drops: dict[str, tuple[list, list]] = {}
    for start in range(0, len(pixels), 32):
        batch = pixels[start : start + 32]
        cat = torch.tensor([label == "cat" for label in explainer.explain(batch).labels])
        before = checks.class_logit(explainer, batch, cat)
        s, g = batch.shape[1], torch.Generator().manual_seed(start)
        cells = checks.upsample(torch.rand(len(batch), 7, 7, generator=g), s)
        masks = {
            "random cells": checks.top_mask(cells, 0.2, g),
            "random pixels": checks.top_mask(torch.rand(batch.shape[:3], generator=g), 0.2, g),
        }
        for name, m in variants(explainer, batch, cat.float() * 2 - 1).items():
            masks[name] = checks.top_mask(checks.upsample(m, s), 0.2, g)
        for name, mask in masks.items():
            after = checks.class_logit(explainer, checks.grey_out(batch, mask), cat)
            probability, logit = drops.setdefault(name, ([], []))
            probability.append(torch.sigmoid(before) - torch.sigmoid(after))
            logit.append(before - after)
    if args.sanity:
        sanity(explainer, pixels[: args.sanity])
    means = {
        k: (torch.cat(p).mean().item(), torch.cat(q).mean().item()) for k, (p, q) in drops.items()
    }
    pixels_p, pixels_l = means["random pixels"]
    cells_p, _ = means["random cells"]
    print(f"{args.checkpoint}: {len(pixels)} pictures from {args.data}")
    print(
        "| map | probability drop | / random pixels | / random cells | logit drop | / random pixels |"
    )
    print("|---|---|---|---|---|---|")
    for name, (p, q) in means.items():
        print(f"| {name} | {p:.4f} | {p / pixels_p:.2f}x | {p / cells_p:.2f}x | {q:.3f} | "
              f"{q / pixels_l:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
