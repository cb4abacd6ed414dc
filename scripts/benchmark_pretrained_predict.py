"""`catnet predict` with a pretrained checkpoint against the most any predictor can do here.

    python scripts/benchmark_pretrained_predict.py --checkpoint RUN/best.pt \
        --data ../shared/data/cats-vs-dogs-dev [--files 4000] [--rounds 3]

The limit is 1 / (1/decode + 1/forward): decoding JPEGs to the checkpoint's decode size on every
core, and the checkpoint's network on ready tensors (bf16 where the CPU has it, batch 64), both
measured in the same run just before `catnet predict`. Reported with and without flip TTA (TTA
runs the network twice per picture, so its limit is lower too). As for the CNN
(benchmark_speed.py), the ratio is taken over enough files (4,000 by default, cycling the photos
through symlinks) that the command's fixed start-up is a small share: a pretrained predict starts
in ~6 s (importing torch and timm, loading the model), which the script measures and prints on
its own line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_speed import cli_seconds, pure_decode

from catnet.data.folders import list_files
from catnet.predicting.prediction import load_model
from catnet.runtime.compute import setup_threads


def forward_per_second(checkpoint: Path, tta: bool, n: int = 256, batch: int = 64) -> float:
    model = load_model(checkpoint)
    pixels = torch.randint(
        0, 256, (batch, model.decode_size, model.decode_size, 3), dtype=torch.uint8
    )
    model.probabilities(pixels, tta)  # warm-up
    started = time.monotonic()
    for _ in range(n // batch):
        model.probabilities(pixels, tta)
    return (n // batch) * batch / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=1, help="median ratio of this many runs")
    args = parser.parse_args()
    setup_threads()
    files = list_files(args.data)
    decode_size = load_model(args.checkpoint).decode_size
    with tempfile.TemporaryDirectory() as tmp:
        many = Path(tmp) / "many"
        for i in range(args.files):
            link = many / f"part{i % 16}" / f"{i}{files[i % len(files)].suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(files[i % len(files)].resolve())
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"load average before: {load}")
        for tta in (False, True):
            report(args, many, tta, files, decode_size, Path(tmp))
        one = ["predict", str(args.checkpoint), str(files[0]), "-o", str(Path(tmp) / "one.csv")]
        startup = min(cli_seconds(one) for _ in range(2))
        print(f"start-up (predict on one picture, best of 2): {startup:.1f} s")
        print(f"load average after: {Path('/proc/loadavg').read_text().split()[0]}")


def report(
    args: argparse.Namespace, many: Path, tta: bool, files: list[Path], size: int, tmp: Path
) -> None:
    """Each round measures the limit just before its predict run, so that both share the
    machine's state; prints the round with the median ratio, and every round's ratio."""
    flag = "--tta" if tta else "--no-tta"
    rounds = []
    for _ in range(args.rounds):
        forward = forward_per_second(args.checkpoint, tta)
        decode = pure_decode(files[: args.files], size)
        limit = 1 / (1 / decode + 1 / forward)
        out = tmp / "p.csv"
        seconds = cli_seconds(["predict", str(args.checkpoint), str(many), flag, "-o", str(out)])
        rounds.append((args.files / seconds / limit, args.files / seconds, decode, forward, limit))
    ratio, predict, decode, forward, limit = sorted(rounds)[len(rounds) // 2]
    every = ", ".join(f"{r[0]:.2f}" for r in rounds)
    print(f"TTA {'on ' if tta else 'off'}: predict {predict:.1f} img/s over {args.files} files, "
          f"decode {decode:.1f}, forward {forward:.1f}, limit {limit:.1f}, "
          f"ratio {ratio:.2f} (rounds: {every})")  # fmt: skip


if __name__ == "__main__":
    main()
