"""Training images/s of `catnet train` on N torchrun processes against one process, same run.

    python scripts/benchmark_distributed.py --data ../shared/data/cats-vs-dogs-dev [--procs 2]

Both runs train the same CNN on the same (already cached) pictures for a few epochs; the speed
is the training pictures of an epoch over the median time of epochs 2.. (metrics.csv's
`seconds`, so validation is included; the first epoch pays one-off costs). One process uses
every core; N processes split the cores among them (catnet divides its threads by the ranks of
a machine). Rounds alternate between the two, and the ratio printed is the median over rounds.
On a CPU, N processes on the same cores cannot compute more than one process: the ratio is the
price of the gradient all-reduce and the smaller per-process batches, not a speed-up. The gain
is on several GPUs or machines, which this script can run on too (--procs = GPUs).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_train(data: Path, out: Path, procs: int, args: list[str]) -> float:
    """Training pictures/s of one `catnet train` (procs > 1: under torchrun)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("CATNET_THREADS", None)
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--standalone"]
    cmd = [sys.executable, *(launcher if procs > 1 else []), "-m", "catnet", "train", str(data),
           "--out", str(out), *args]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: done, some unreadable pictures skipped
        sys.exit(f"catnet train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with (out / "metrics.csv").open() as fh:
        seconds = [float(row["seconds"]) for row in csv.DictReader(fh)]
    epoch = statistics.median(b - a for a, b in itertools.pairwise(seconds))
    return count_train(out) / epoch


def count_train(out: Path) -> int:
    """Training pictures of the run, from its checkpoint's data summary."""
    import torch

    payload = torch.load(out / "last.pt", weights_only=True)
    return sum(payload["data_summary"]["counts"]["train"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    opts = parser.parse_args()
    args = ["--model", "cnn", "--epochs", str(opts.epochs), "--image-size", str(opts.image_size)]
    with tempfile.TemporaryDirectory() as tmp:
        # Fills the decode cache, so that neither measured run pays for decoding.
        run_train(opts.data, Path(tmp) / "warm", 1, [*args[:2], "--epochs", "2", *args[4:]])
        ratios = []
        for r in range(opts.rounds):
            one = run_train(opts.data, Path(tmp) / f"one{r}", 1, args)
            many = run_train(opts.data, Path(tmp) / f"many{r}", opts.procs, args)
            ratios.append(many / one)
            print(f"round {r + 1}: 1 process {one:.0f} images/s, {opts.procs} processes "
                  f"{many:.0f} images/s, ratio {many / one:.2f}", flush=True)  # fmt: skip
    print(f"median ratio ({opts.procs} processes / 1): {statistics.median(ratios):.2f}; "
          f"load {Path('/proc/loadavg').read_text().split()[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
