"""Peak memory of `catnet predict` stays bounded however many files it is given.

    python scripts/benchmark_predict_memory.py --files 100000

Writes N tiny JPEGs, trains nothing (an untrained checkpoint of the default CNN is enough for
memory), then runs `catnet predict DIR --output rows.csv` on 1,000 files and on all N, and prints
the peak resident memory (RSS) of the largest process of each run (ru_maxrss of the children),
and their ratio. Bounded memory means the ratio stays near 1 while the file count grows 100x.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def write_files(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # 8 sub-folders: a realistic tree, and no single huge directory listing
        sub = folder / f"part{i % 8}"
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (24, 24), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)).save(
            sub / f"img_{i}.jpg", quality=80
        )


def untrained_checkpoint(path: Path) -> Path:
    from catnet.config import TrainConfig
    from catnet.data.augment import MEAN, STD
    from catnet.data.cache import cache_size_for
    from catnet.models.checkpoint import make_checkpoint, save_checkpoint
    from catnet.models.networks import architecture_from_config, build_model

    cfg = TrainConfig(model="cnn", image_size=64)
    arch = architecture_from_config(cfg, 64)
    payload = make_checkpoint(
        build_model(arch).state_dict(), arch=arch,
        classes={"positive": "cats", "names": ["cats", "dogs"], "labels": ["not_cat", "cat"]},
        preprocessing={
            "decode_size": cache_size_for(64), "image_size": 64, "mean": list(MEAN), "std": list(STD),
        },
        threshold=0.5, temperature=1.0, tta=True, train_config={}, metrics={},
    )  # fmt: skip
    return save_checkpoint(payload, path)


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB of the largest process in the run, seconds). Each run is a fresh child
    of a fresh helper process, so ru_maxrss of the children is this run's alone."""
    code = (
        "import resource, subprocess, sys, time; t = time.monotonic(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.monotonic() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    kb, seconds = out.stdout.split()
    return int(kb) / 1024, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.monotonic()
        write_files(root / "small", 1000)
        write_files(root / "big", args.files)
        print(f"wrote {args.files + 1000} files in {time.monotonic() - started:.0f} s")
        ckpt = untrained_checkpoint(root / "model.pt")
        base = [sys.executable, "-m", "catnet", "predict", str(ckpt)]
        small, t_small = peak_rss_mb([*base, str(root / "small"), "-o", str(root / "small.csv")])
        big, t_big = peak_rss_mb([*base, str(root / "big"), "-o", str(root / "big.csv")])
        rows = sum(1 for _ in (root / "big.csv").open()) - 1
    print(f"{'files':>8} {'peak RSS (MB)':>14} {'seconds':>8} {'files/s':>8}")
    print(f"{1000:>8} {small:>14.0f} {t_small:>8.1f} {1000 / t_small:>8.0f}")
    print(f"{args.files:>8} {big:>14.0f} {t_big:>8.1f} {args.files / t_big:>8.0f}")
    print(f"peak RSS ratio ({args.files} / 1000 files): {big / small:.2f}; rows written: {rows}")


if __name__ == "__main__":
    main()
