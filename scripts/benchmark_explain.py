"""Do catnet's heatmaps mean something? The deletion test and the randomisation sanity check on
held-out pictures, for any checkpoint (CNN, pretrained, MLP), plus explain's speed.

    python scripts/benchmark_explain.py CHECKPOINT HELD_OUT_DIR [--n 400] [--speed]

- Deletion (ROAD-style): grey out (to the average colour) the 20 % of pixels the map ranks
  highest; the mean drop in the predicted class's probability is compared with greying out
  20 % at random, in cells the size of the map's cells and pixel by pixel. Target: the map's
  drop >= 2x the random drops. Split by the side explained (cat / not_cat), since a not_cat
  answer's map shows the negative logit's evidence. The drop in the predicted class's
  calibrated logit is printed too, as a secondary measure: a very sure model's probability
  saturates (a picture at p 0.9999 that falls to 0.999 barely counts), its logit does not.
- Randomisation (Adebayo et al., 2018): every layer re-initialised at random (3 seeds; batch
  norm re-measured on each batch, see explain_checks.randomised); Spearman rank correlation
  with the trained maps, per picture. Target: mean < 0.5. Empty random maps are counted and
  left out: their correlation of 0 would pass without testing anything.
- Speed (--speed): `explain_files` (maps, PNGs, index, contact sheet) against `predict` on the
  same files, in the same run, and one picture after the model is loaded.

HELD_OUT_DIR must hold pictures the checkpoint never trained on (e.g. the test/ side of
benchmark_accuracy.py's split). Every number is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from explain_checks import (  # noqa: E402
    Deletion,
    deletion_test,
    randomisation_correlation,
)

from catnet.data.folders import IMAGE_SUFFIXES, iter_files  # noqa: E402
from catnet.data.pixels import decode_square  # noqa: E402
from catnet.errors import DecodeError  # noqa: E402
from catnet.explaining.explain import Explainer, explain_images  # noqa: E402
from catnet.predicting.prediction import load_model  # noqa: E402


def pick(folder: Path, n: int, seed: int) -> list[Path]:
    files = sorted(iter_files(folder, IMAGE_SUFFIXES))
    random.Random(seed).shuffle(files)
    return sorted(files[:n])


def decode(files: list[Path], size: int) -> tuple[list[Path], torch.Tensor]:
    kept, pixels = [], []
    for f in files:
        try:
            pixels.append(decode_square(f, size))
            kept.append(f)
        except DecodeError:
            continue
    return kept, torch.from_numpy(np.stack(pixels))


def mean_se(values: torch.Tensor) -> str:
    v = values.double()
    se = float(v.std() / len(v) ** 0.5) if len(v) > 1 else 0.0
    return f"{float(v.mean()):.4f} ± {se:.4f}"


def _ratio(heat: torch.Tensor, random_drop: torch.Tensor) -> float | None:
    """heatmap drop / random drop; None where greying at random did not lower the probability
    (a ratio to a rise means nothing)."""
    return float(heat.mean() / random_drop.mean()) if random_drop.mean() > 0 else None


def _show(ratio: float | None) -> str:
    return "n/a (random raised it)" if ratio is None else f"{ratio:.2f}x"


def deletion(explainer: Explainer, pixels: torch.Tensor, args: argparse.Namespace) -> dict:
    parts: list[Deletion] = []
    generator = torch.Generator().manual_seed(args.seed)
    for start in range(0, len(pixels), args.batch_size):
        batch = pixels[start : start + args.batch_size]
        parts.append(deletion_test(explainer, batch, args.fraction, generator, args.fill))
    side = torch.cat([part.cat for part in parts])
    summary = {}
    for measure in ("probability", "logit"):
        drops = {
            name: torch.cat([getattr(part, measure)[name] for part in parts])
            for name in ("heatmap", "random_cells", "random_pixels")
        }
        summary[measure] = _deletion_table(drops, side, measure, args)
    return summary


def _deletion_table(drops: dict, side: torch.Tensor, measure: str, args) -> dict:
    """Print one markdown table of mean drops (± standard error) by the side explained."""
    note = "" if measure == "probability" else " (secondary: it does not saturate)"
    print(f"\ndeletion ({args.fill}): {args.fraction:.0%} of the pixels, mean drop in the predicted "
          f"class's {measure}{note} (± standard error)")  # fmt: skip
    print("| explained side | pictures | heatmap | random cells | random pixels "
          "| heatmap / random cells | heatmap / random pixels |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for label, mask in (("all", torch.ones_like(side)), ("cat", side), ("not_cat", ~side)):
        if not mask.any():
            continue
        h, c, p = (drops[k][mask] for k in ("heatmap", "random_cells", "random_pixels"))
        ratio_c, ratio_p = _ratio(h, c), _ratio(h, p)
        print(f"| {label} | {int(mask.sum())} | {mean_se(h)} | {mean_se(c)} | {mean_se(p)} | "
              f"{_show(ratio_c)} | {_show(ratio_p)} |")  # fmt: skip
        summary[label] = {
            "n": int(mask.sum()), "heatmap": float(h.mean()), "random_cells": float(c.mean()),
            "random_pixels": float(p.mean()), "ratio_cells": ratio_c, "ratio_pixels": ratio_p,
        }  # fmt: skip
    return summary


def sanity(explainer: Explainer, pixels: torch.Tensor, args: argparse.Namespace) -> dict:
    print("\nrandomisation: Spearman rank correlation, trained maps vs re-initialised network "
          "(batch norm calibrated on each batch; empty random maps counted, left out of rho)")  # fmt: skip
    print("| seed | mean rho | mean abs(rho) | share with rho >= 0.5 | empty random maps |")
    print("|---|---|---|---|---|")
    means = []
    for seed in range(3):
        # No batch of one: batch norm is re-measured on each batch, and a 1 x 1 stage of a
        # single picture has one value per channel.
        starts = list(range(0, len(pixels), args.batch_size))
        if len(starts) > 1 and len(pixels) - starts[-1] == 1:
            starts.pop()
        ends = [*starts[1:], len(pixels)]
        rhos, empties = zip(*[
            randomisation_correlation(explainer, pixels[s:e], seed) for s, e in zip(starts, ends, strict=True)
        ], strict=True)  # fmt: skip
        empty = torch.cat(empties)
        rho = torch.cat(rhos)[~empty]
        means.append(float(rho.mean()) if len(rho) else float("nan"))
        print(f"| {seed} | {means[-1]:.3f} | {rho.abs().mean():.3f} | "
              f"{float((rho >= 0.5).float().mean()):.1%} | {int(empty.sum())} of {len(empty)} |")  # fmt: skip
    print(f"mean over seeds: {statistics.mean(means):.3f} ± {statistics.stdev(means):.3f}")
    return {"rho_per_seed": means}


def speed(model, files: list[Path]) -> dict:
    from catnet.config import ExplainConfig, PredictConfig
    from catnet.explaining.explain_files import explain_files
    from catnet.predicting.prediction import predict

    inputs = [str(f) for f in files]
    started = time.perf_counter()
    predict(model, inputs, PredictConfig())
    predict_rate = len(files) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as out:
        summary = explain_files(model, inputs, Path(out), ExplainConfig())
    explain_images(model, [files[0]])  # warm
    times = []
    for f in files[:5]:  # the median of 5 pictures: one timing on a shared machine is noise
        started = time.perf_counter()
        explain_images(model, [f])
        times.append(time.perf_counter() - started)
    one = statistics.median(times)
    print(f"\nspeed: predict {predict_rate:.1f} images/s, explain {summary['images_per_s']:.1f} "
          f"images/s (maps + PNGs + contact sheet), ratio {summary['images_per_s'] / predict_rate:.2f}; "
          f"one picture after loading {one * 1000:.0f} ms (median of 5); "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")  # fmt: skip
    return {"predict_per_s": predict_rate, "explain_per_s": summary["images_per_s"], "one_s": one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="held-out pictures (searched recursively)")
    parser.add_argument("--n", type=int, default=400, help="pictures to use (random subset)")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fill", choices=("grey", "blur"), default="grey",
                        help="what replaces the deleted pixels")  # fmt: skip
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--no-sanity", action="store_true", help="skip the randomisation check")
    parser.add_argument("--no-deletion", action="store_true", help="skip the deletion test")
    args = parser.parse_args()
    model = load_model(args.checkpoint)
    explainer = Explainer(model)
    files, pixels = decode(pick(args.data, args.n, args.seed), model.decode_size)
    print(f"checkpoint {args.checkpoint} ({model.payload['arch']['type']}, {model.hash}), "
          f"{len(files)} pictures from {args.data}; method {explainer.method}: {explainer.note}")  # fmt: skip
    results = {}
    if not args.no_deletion:
        results["deletion"] = deletion(explainer, pixels, args)
    if not args.no_sanity:
        results["sanity"] = sanity(explainer, pixels, args)
    if args.speed:
        results["speed"] = speed(model, files)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
