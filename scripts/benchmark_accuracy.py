"""Accuracy on held-out real photos: the number users judge catnet by.

For each seed, DATA is split 80/20 (stratified per class folder) into a training folder and a
test folder of links; `catnet train` runs on the 80% exactly as a user would (it holds out part
of it for validation itself), and `catnet evaluate` scores best.pt on the unseen 20%.

    python scripts/benchmark_accuracy.py --data ../shared/data/cats-vs-dogs-dev \
        --time-budget 600 --repeats 3

Prints mean ± std accuracy and wall time per model. Whole commands are timed, start-up and
data loading included; the first run also pays for filling the decode cache.
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


def run(cmd: list[str]) -> tuple[str, float]:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
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
    _, train_seconds = run(cmd)
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
    return {
        "model": model,
        "seed": seed,
        "accuracy": metrics["accuracy"],
        "accuracy_no_tta": plain["accuracy"],
        "roc_auc": metrics["roc_auc"],
        "n_test": metrics["n"],
        "train_seconds": train_seconds,
    }


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
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.repeats):
        train_dir, test_dir = split_folder(
            args.data, args.out / f"split-seed{seed}", seed, args.train_per_class, args.downscale
        )
        for model in args.models.split(","):
            row = one_run(model, train_dir, test_dir, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summarize(rows)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
