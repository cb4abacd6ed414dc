"""`catnet predict` with a pretrained checkpoint against the most any predictor can do here.

    python scripts/benchmark_pretrained_predict.py --checkpoint RUN/best.pt \
        --data ../shared/data/cats-vs-dogs-dev --files 400

The limit is 1 / (1/decode + 1/forward): decoding JPEGs to the checkpoint's decode size on every
core, and the checkpoint's network on ready tensors (bf16 where the CPU has it, batch 64), both
measured in the same run just before `catnet predict`. Reported with and without flip TTA (TTA
runs the network twice per picture, so its limit is lower too).
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
from catnet.inference.prediction import load_model
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
    parser.add_argument("--files", type=int, default=400)
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
            forward = forward_per_second(args.checkpoint, tta)
            decode = pure_decode(files[: args.files], decode_size)
            limit = 1 / (1 / decode + 1 / forward)
            flag = "--tta" if tta else "--no-tta"
            out = Path(tmp) / "p.csv"
            seconds = cli_seconds(
                ["predict", str(args.checkpoint), str(many), flag, "-o", str(out)]
            )
            predict = args.files / seconds
            print(f"TTA {'on ' if tta else 'off'}: predict {predict:.1f} img/s, decode "
                  f"{decode:.1f}, forward {forward:.1f}, limit {limit:.1f}, "
                  f"ratio {predict / limit:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
