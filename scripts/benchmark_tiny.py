"""The textbook networks on a course-sized set: ~200 training pictures of 64x64 px.

The classic course set (209 training pictures of 64x64, cats against assorted non-cats, 50 test
pictures) is not ours to ship, so each split stands in for it with the dev photos: 100 cats and
100 non-cats cut to 64x64 for training, held-out pictures of the same kinds for testing
(200 cats, 200 non-cats). Non-cats are `dogs` (the dev photos' other class: harder than the
course's assorted objects) or, with `--non-cats mixed`, half dogs and half of the demo's
drawings of cars, birds and houses (catnet/demo/synthetic.py): assorted things, as in the course.

For each split and recipe (a configs/*.toml name) it runs `catnet train` as a user would and
`catnet evaluate` on the test pictures, which reports the accuracy with the open-set check and
without it. Today's defaults (configs/mlp.toml, configs/cnn.toml) are the baseline, measured in
the same run on the same splits:

    python scripts/benchmark_tiny.py --data ../shared/data/cats-vs-dogs-dev --repeats 3
    python scripts/benchmark_tiny.py --data ../shared/data/cats-vs-dogs-dev --non-cats mixed
    # one recipe with other settings (flags of catnet train):
    python scripts/benchmark_tiny.py --data ... --recipes tiny-cnn --train-args "--dropout 0.3"

Prints mean ± std over the splits (never the best split) per recipe, with the check on and off.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmark_accuracy import REPO, run, split_folder

sys.path.insert(0, str(REPO))
from catnet.demo.synthetic import draw_image

DRAWINGS = ("cars", "birds", "houses")  # the demo's non-cat objects (not its noise)


def tiny_split(data: Path, out: Path, seed: int, non_cats: str) -> tuple[Path, Path]:
    """out/train: 100 cats + 100 non-cats, out/test: 200 + 200, all 64x64 (see the docstring)."""
    train, test = split_folder(data, out, seed, train_per_class=100, downscale=64)
    if non_cats == "mixed":  # half the dogs make way for drawings, train and test alike
        for part, first in ((train, 0), (test, 1000)):
            dogs = sorted((part / "dogs").iterdir())
            random.Random(f"tiny:{seed}").shuffle(dogs)
            for f in dogs[len(dogs) // 2 :]:
                f.unlink()
            drawings = part / "drawings"
            drawings.mkdir()
            for i in range(len(dogs) - len(dogs) // 2):
                rng = random.Random(f"tiny:{seed}:{first + i}")
                draw_image(DRAWINGS[i % 3], rng, 64).save(drawings / f"d{i}.jpg", quality=90)
    return train, test


def one_run(recipe: str, train: Path, test: Path, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / f"{recipe}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "catnet", "train", str(train), "--out", str(run_dir)]
    cmd += ["--config", str(REPO / "configs" / f"{recipe}.toml"), "--seed", str(seed)]
    for extra in args.train_args:
        cmd += extra.split()
    _, seconds = run(cmd)
    evaluate = [sys.executable, "-m", "catnet", "evaluate", str(run_dir / "best.pt"), str(test)]
    metrics = json.loads(run([*evaluate, "--json"])[0])
    check = metrics.get("open_set", {})
    epochs = len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    return {
        "recipe": recipe,
        "seed": seed,
        "accuracy": metrics["accuracy"],  # as a user gets it: the open-set check on
        "accuracy_without_check": check.get("accuracy_without_check", metrics["accuracy"]),
        "n_test": metrics["n"],
        "epochs": epochs,
        "train_seconds": seconds,
    }


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def summarize(rows: list[dict]) -> None:
    print(f"\n{'recipe':<10} {'splits':>6} {'open-set on':>14} {'open-set off':>14} "
          f"{'epochs':>8} {'train s':>10}")  # fmt: skip
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        on = mean_sd([r["accuracy"] * 100 for r in mine])
        off = mean_sd([r["accuracy_without_check"] * 100 for r in mine])
        epochs = mean_sd([r["epochs"] for r in mine])
        secs = mean_sd([r["train_seconds"] for r in mine])
        print(
            f"{recipe:<10} {len(mine):>6} {on + ' %':>14} {off + ' %':>14} {epochs:>8} {secs:>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with cats/ and dogs/")
    parser.add_argument("--recipes", default="mlp,tiny-mlp,cnn,tiny-cnn", help="configs/*.toml")
    parser.add_argument("--non-cats", choices=("dogs", "mixed"), default="dogs")
    parser.add_argument("--repeats", type=int, default=3, help="splits (seeds 0..N-1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-tiny"))
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument(
        "--train-args", action="append", default=[], help="extra `catnet train` flags"
    )
    args = parser.parse_args()
    splits = {}
    for seed in range(args.repeats):
        split = args.out / f"split-{args.non_cats}-seed{seed}"
        splits[seed] = tiny_split(args.data, split, seed, args.non_cats)
    runs = [(recipe, *splits[seed], seed) for recipe in args.recipes.split(",") for seed in splits]

    def job(recipe: str, train: Path, test: Path, seed: int) -> dict:
        row = one_run(recipe, train, test, seed, args)
        print(json.dumps(row), flush=True)
        return row

    # --jobs > 1: several runs at once (each its own process), for a machine with spare cores
    # or one shared with others; compare recipes by accuracy then, never by their times.
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda r: job(*r), runs))
    summarize(rows)
    (args.out / f"results-{args.non_cats}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
