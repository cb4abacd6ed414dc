"""Calibration on small folders: ECE of p(cat) on held-out photos, today's rule against the
checkpoint's own temperature, at a few folder sizes.

For each size (photos a class) and split, DATA (cats/ and dogs/) is split 80/20 as in
benchmark_accuracy.py, the training side cut to that many photos a class; `catnet train` (the
default recipe) learns from it as a user would, and p(cat) is measured on the held-out 20 %
(~400 photos at the dev set's size):
  - today: the rule before issue #25. Temperature scaling was skipped below 100 validation
    photos (T = 1), which every size here is (a fifth of 2 x 150 is 60);
  - now: the temperature the checkpoint stores (training.finalize.calibrate).

    python scripts/benchmark_calibration.py --data ../shared/data/cats-vs-dogs-dev \
        --sizes 20,50,150 --splits 3

Runs are kept under --out; a run whose best.pt exists is not trained again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_accuracy import run, split_folder
from benchmark_openset import Pictures, files_in


def measure(best: Path, test: Path) -> dict[str, float]:
    from catnet.predicting.prediction import load_model
    from catnet.scoring.calibration import expected_calibration_error
    from catnet.scoring.decision import probabilities

    model = load_model(best)
    pics = Pictures.of(model, files_in(test))
    today, now = (torch.from_numpy(probabilities(pics.logits, t)) for t in (1.0, model.temperature))
    return {
        "T": model.temperature,
        "ECE today": expected_calibration_error(today, pics.cats),
        "ECE now": expected_calibration_error(now, pics.cats),
        "accuracy": float(((now >= model.threshold) == pics.cats).float().mean()),
        "n": len(pics.cats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cats/ and dogs/ folders")
    parser.add_argument("--sizes", default="20,50,150", help="training photos a class")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=120.0)
    parser.add_argument("--train-args", default="", help="more `catnet train` options")
    parser.add_argument("--out", type=Path, default=Path("/tmp/catnet-bench-calibration"))
    args = parser.parse_args()
    rows: dict[int, list[dict[str, float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        for seed in range(args.splits):
            split = args.out / f"n{size}-split{seed}"
            run_dir = split / "run"
            if not (run_dir / "best.pt").exists():
                split_folder(args.data, split, seed, train_per_class=size)
                cmd = [sys.executable, "-m", "catnet", "train", str(split / "train"),
                       "--seed", str(seed), "--time-budget", str(args.time_budget),
                       "--out", str(run_dir), *args.train_args.split()]  # fmt: skip
                run(cmd)
            r = measure(run_dir / "best.pt", split / "test")
            print(f"{size:4} a class, split {seed}: T {r['T']:.3f}, ECE today "
                  f"{r['ECE today']:.4f} -> now {r['ECE now']:.4f} on {r['n']} held-out photos "
                  f"(accuracy {r['accuracy']:.2%})", flush=True)  # fmt: skip
            rows.setdefault(size, []).append(r)
    print("photos a class | ECE today (T = 1)   | ECE now             | T now (mean ± sd)")
    for size, rs in rows.items():
        cells = []
        for key in ("ECE today", "ECE now", "T"):
            values = [r[key] for r in rs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
        print(f"{size:14} | " + " | ".join(f"{c:19}" for c in cells))
    if not rows:
        print("no sizes given")


if __name__ == "__main__":
    main()
