"""Accuracy on held-out real photos: the number users judge catnet by.

For each seed, DATA is split 80/20 (stratified per class folder) into a training folder and a
test folder of links; `catnet train` runs on the 80% exactly as a user would (it holds out part
of it for validation itself), and `catnet evaluate` scores best.pt on the unseen 20%.

    python scripts/benchmark_accuracy.py --data ../shared/data/cats-vs-dogs-dev \
        --time-budget 600 --repeats 3

    # the pretrained default against its floor (frozen features + logistic regression on the
    # same splits), every train command with an empty cache (decoding and features included):
    python scripts/benchmark_accuracy.py --data ../shared/data/cats-vs-dogs-dev \
        --models pretrained --time-budget 120 --cold

Prints mean ± std accuracy and wall time per model. Whole commands are timed, start-up and
data loading included; the first run also pays for filling the decode cache (unless --cold:
then every run does). With the pretrained model, the floor is measured too, and each split's
paired difference (catnet - floor) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent


def split_folder(
    data: Path, out: Path, seed: int, train_per_class: int = 0, downscale: int = 0
) -> tuple[Path, Path]:
    """out/train/<class>/ and out/test/<class>/, stratified 80/20: links to the photos, or with
    `downscale` copies cut to downscale x downscale px (the small-data check); the training
    side optionally cut to `train_per_class` photos per class (the test side never is)."""
    if out.exists():
        shutil.rmtree(out)
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        random.Random(f"bench:{seed}:{class_dir.name}").shuffle(files)
        n_test = round(len(files) * 0.2)
        train = files[n_test:][: train_per_class or None]
        for split, part in (("test", files[:n_test]), ("train", train)):
            target = out / split / class_dir.name
            target.mkdir(parents=True)
            for f in part:
                if downscale:
                    with Image.open(f) as img:
                        small = ImageOps.fit(img.convert("RGB"), (downscale, downscale))
                        small.save(target / f"{f.stem}.jpg", quality=90)
                else:
                    os.symlink(f.resolve(), target / f.name)
    return out / "train", out / "test"


def run(cmd: list[str], env: dict | None = None, ok: tuple[int, ...] = (0, 1)
        ) -> tuple[str, float]:  # fmt: skip
    """(stdout, seconds) of a command; another exit code than `ok` stops the benchmark (by
    default 1 passes: done, some unreadable pictures skipped)."""
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if proc.returncode not in ok:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout, seconds


def one_run(
    model: str, train_dir: Path, test_dir: Path, seed: int, args: argparse.Namespace
) -> dict:
    run_dir = args.out / f"{model}-seed{seed}"
    cmd = [sys.executable, "-m", "catnet", "train", str(train_dir), "--out", str(run_dir)]
    cmd += ["--config", str(REPO / "configs" / f"{model}.toml"), "--seed", str(seed)]
    cmd += ["--time-budget", str(args.time_budget)]
    if args.device:
        cmd += ["--device", args.device]
    for extra in args.train_args:
        cmd += extra.split()
    env = None
    if args.cold:  # an empty pixel and feature cache: decoding and features are timed too
        cold = args.out / f"cold-cache-{model}-seed{seed}"
        shutil.rmtree(cold, ignore_errors=True)
        env = {**os.environ, "CATNET_CACHE": str(cold)}
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else ""
    _, train_seconds = run(cmd, env)
    evaluate = [
        sys.executable,
        "-m",
        "catnet",
        "evaluate",
        str(run_dir / "best.pt"),
        str(test_dir),
        "--json",
    ]
    # As a user gets it (flip TTA follows the checkpoint: on for the CNN recipe), and without TTA.
    metrics = json.loads(run(evaluate)[0])
    plain = json.loads(run([*evaluate, "--no-tta"])[0])
    epochs_run = len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    return {
        "model": model,
        "seed": seed,
        "accuracy": metrics["accuracy"],
        # The same answers with the open-set check off: what the check costs (or gains).
        "accuracy_without_check": metrics.get("open_set", {}).get("accuracy_without_check"),
        "epochs_run": epochs_run,
        "accuracy_no_tta": plain["accuracy"],
        "roc_auc": metrics["roc_auc"],
        "n_test": metrics["n"],
        "train_seconds": train_seconds,
        "loadavg_before": load,
        "ece": metrics.get("ece"),
        "ece_uncalibrated": metrics.get("ece_uncalibrated"),
    }


def floor_accuracy(train_dir: Path, test_dir: Path) -> float:
    """The floor: the default backbone's frozen pooled features at its native size (whole picture, centre
    square), a logistic regression fitted on every training photo, scored on the test photos.
    The features come from catnet's feature cache when a training run already computed them
    (the same numbers: the same frozen network on the same pixels)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from catnet.data.cache import default_cache_root, load_pixels
    from catnet.data.folders import list_files
    from catnet.models.pretrained import (
        DEFAULT_BACKBONE,
        PretrainedNet,
        input_defaults,
        load_imagenet_backbone,
    )
    from catnet.runtime.compute import select_compute, setup_threads
    from catnet.training.features import FrozenPass, feature_store

    setup_threads()
    net = PretrainedNet(DEFAULT_BACKBONE)
    load_imagenet_backbone(net, DEFAULT_BACKBONE)
    net.eval()
    compute = select_compute()
    side, mean, std = input_defaults(DEFAULT_BACKBONE)
    frozen = FrozenPass(net, 0, side, mean, std, compute)
    store = feature_store(net, DEFAULT_BACKBONE, side, 0, frozen.name, default_cache_root())

    def features(root: Path) -> tuple[np.ndarray, np.ndarray]:
        from catnet.training.features import cached_features

        files = [f for c in sorted(root.iterdir()) for f in list_files(c)]
        labels = np.array([int(f.parent.name in ("cat", "cats")) for f in files])
        table = load_pixels(files, side, cache_root=default_cache_root())
        ok = np.flatnonzero(table.ok)
        plain, _ = cached_features(
            frozen, [files[i] for i in ok], table.array, table.slots[ok], store
        )
        return plain.numpy(), labels[ok]

    with torch.no_grad():
        x_train, y_train = features(train_dir)
        x_test, y_test = features(test_dir)
    fitted = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    return float(fitted.score(x_test, y_test))


def summarize(rows: list[dict]) -> None:
    print(f"\n{'model':<6} {'runs':>4} {'accuracy':>16} {'without TTA':>16} {'wall time (s)':>16}")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]

        def fmt(key: str, scale: float = 100.0, digits: int = 1, mine: list = mine) -> str:
            values = [r[key] * scale for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

        print(
            f"{model:<6} {len(mine):>4} {fmt('accuracy') + ' %':>16} {fmt('accuracy_no_tta') + ' %':>16} "
            f"{fmt('train_seconds', 1.0, 0):>16}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of class folders (cats/, dogs/)"
    )
    parser.add_argument(
        "--time-budget", type=float, default=600.0, help="seconds per training command"
    )
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-accuracy"))
    parser.add_argument("--device", default="", help="cpu or cuda (default: catnet's choice)")
    parser.add_argument(
        "--train-per-class", type=int, default=0, help="cut training photos per class"
    )
    parser.add_argument(
        "--downscale", type=int, default=0, help="use PX x PX copies (small-data check)"
    )
    parser.add_argument(
        "--train-args", action="append", default=[], help="extra `catnet train` flags"
    )
    parser.add_argument(
        "--cold", action="store_true", help="every train command starts with an empty cache"
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the frozen-features + LR floor"
    )
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.repeats):
        train_dir, test_dir = split_folder(
            args.data, args.out / f"split-seed{seed}", seed, args.train_per_class, args.downscale
        )
        for model in args.models.split(","):
            row = one_run(model, train_dir, test_dir, seed, args)
            if model == "pretrained" and not args.no_floor:
                row["floor"] = floor_accuracy(train_dir, test_dir)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summarize(rows)
    floors = [r for r in rows if "floor" in r]
    if floors:
        print(
            f"\n{'split':<6} {'catnet':>8} {'floor':>8} {'difference':>11}  (pretrained vs floor)"
        )
        for r in floors:
            diff = (r["accuracy"] - r["floor"]) * 100
            print(
                f"{r['seed']:<6} {r['accuracy'] * 100:>7.2f}% {r['floor'] * 100:>7.2f}% {diff:>+10.2f}"
            )
        diffs = [(r["accuracy"] - r["floor"]) * 100 for r in floors]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(f"paired difference: {statistics.mean(diffs):+.2f} ± {sd:.2f} points")
        for r in floors:
            print(f"split {r['seed']}: ECE before calibration {r['ece_uncalibrated']:.4f}, "
                  f"after {r['ece']:.4f}")  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
