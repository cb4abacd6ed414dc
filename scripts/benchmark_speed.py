"""Speed of catnet against baselines measured in the same run, on the same machine.

    python scripts/benchmark_speed.py --data ../shared/data/cats-vs-dogs-dev

(a) epoch time after the first: catnet vs the pipeline a user would write by default
    (torchvision ImageFolder + per-image PIL transforms + DataLoader(num_workers=cores), fp32);
(b) catnet's steady-state training images/s / the same model's pure compute images/s;
(c) `catnet predict` images/s / 1 / (1/decode + 1/forward), the most any predictor can do;
(d) the one-time cost of building the decode cache, and `catnet --help` wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchmark_accuracy import run

from catnet.config import PredictConfig, TrainConfig
from catnet.data.augment import MEAN, STD
from catnet.data.cache import cache_size_for, load_pixels
from catnet.data.folders import list_files, scan_dataset
from catnet.data.pixels import decode_square
from catnet.models.networks import CNN, fuse_for_inference
from catnet.runtime.compute import Compute, select_compute, setup_threads
from catnet.runtime.workers import cpu_workers
from catnet.training.prepare import PreparedData, eval_size_for
from catnet.training.results import TrainCallbacks
from catnet.training.schedule import EarlyStopping
from catnet.training.state import Run, TrainState
from catnet.training.steps import build_optimizer, pixel_epoch


def baseline_epoch_seconds(data: Path, cfg: TrainConfig, epochs: int = 2) -> float:
    """Seconds of the last of `epochs` epochs of the textbook torchvision pipeline, fp32."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(cfg.rotation),
        transforms.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(str(data), transform=tf)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cpu_workers(),
        persistent_workers=True,
    )
    model = CNN(cfg.width, cfg.depth, cfg.activation, cfg.dropout)
    optimizer = build_optimizer(model, cfg)
    seconds = 0.0
    for _ in range(epochs):
        started = time.monotonic()
        model.train()
        for x, y in loader:
            loss = F.binary_cross_entropy_with_logits(model(x), (y == 0).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds = time.monotonic() - started
    return seconds


def fresh_baseline_seconds(args: argparse.Namespace) -> float:
    """The baseline in a new Python process, as a user's script would run it."""
    cmd = [sys.executable, __file__, "--data", str(args.data), "--baseline-only"]
    cmd += ["--image-size", str(args.image_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def catnet_epochs(
    data: Path, cfg: TrainConfig, cache_root: Path, compute: Compute
) -> dict[str, float]:
    """Cache build time, then the seconds of catnet's 2nd and 3rd epoch over every picture."""
    dataset = scan_dataset(data, val_fraction=0.0)
    samples = dataset.train + dataset.val
    decode_size = cache_size_for(cfg.image_size)
    started = time.monotonic()
    table = load_pixels([s.path for s in samples], decode_size, cache_root=cache_root)
    cache_seconds = time.monotonic() - started
    ok = np.flatnonzero(table.ok)
    labels = np.array([samples[i].label for i in ok], dtype=np.int64)
    prepared = PreparedData(
        dataset, cfg.image_size, decode_size, decode_size, table.array, table.slots[ok], labels,
        table.slots[ok[:1]], labels[:1], {}, [],
    )  # fmt: skip
    model = CNN(cfg.width, cfg.depth, cfg.activation, cfg.dropout).to(
        memory_format=torch.channels_last
    )
    state = TrainState(stopper=EarlyStopping(0), total_steps=10**6)
    gen = torch.Generator().manual_seed(0)
    run = Run(cfg, prepared, Path("."), compute, gen, time.monotonic(), TrainCallbacks(), None,
              state)  # fmt: skip
    run.model = run.forward = model
    run.optimizer, run.batch_size = build_optimizer(model, cfg), cfg.batch_size
    times = []
    for _ in range(3):
        started = time.monotonic()
        pixel_epoch(run, lambda step, steps, loss: None)
        times.append(time.monotonic() - started)
    return {"cache_build": cache_seconds, "epoch": min(times[1:]), "n": len(ok)}


def pure_compute(
    cfg: TrainConfig, compute: Compute, train: bool, size: int, batch: int, steps: int = 30
) -> float:
    """Images/s of forward (+ backward + step) on random (batch, 3, size, size) tensors."""
    model = CNN(cfg.width, cfg.depth, cfg.activation, cfg.dropout).to(
        memory_format=torch.channels_last
    )
    optimizer = build_optimizer(model, cfg)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,)).float()
    model.train(train)
    if not train:  # the fastest form of the same network: batch norm folded, as predict runs it
        model = fuse_for_inference(model)
    times = []
    for _ in range(steps):
        started = time.monotonic()
        with torch.set_grad_enabled(train), compute.autocast():
            out = model(x)
        if train:
            loss = F.binary_cross_entropy_with_logits(out.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.monotonic() - started)
    return batch / float(np.median(times[2:]))


def _decode(path: str, size: int = 0) -> None:
    decode_square(path, size)


def pure_decode(files: list[Path], size: int, passes: int = 3) -> float:
    """Images/s of decoding (draft-mode JPEG, resize) on every core, nothing else: the best
    of `passes` passes over the files, so that the limit in (c) errs on the high side."""
    tasks = [(str(f), size) for f in files]
    with multiprocessing.get_context("fork").Pool(cpu_workers()) as pool:
        pool.starmap(_decode, tasks[:64])  # warm up
        best = float("inf")
        for _ in range(passes):
            started = time.monotonic()
            pool.starmap(_decode, tasks, chunksize=16)
            best = min(best, time.monotonic() - started)
    return len(files) / best


def predict_against_limit(
    args: argparse.Namespace, cfg: TrainConfig, compute: Compute, tmp: Path, rounds: int = 3
) -> dict:
    """(c): `catnet predict` on args.predict_files JPEGs against 1 / (1/decode + 1/forward).
    Each round measures the limit just before its predict run, so that the two share the
    machine's state (its speed drifts by ~5-10 % over minutes here); the round with the
    median ratio is reported."""
    files = list_files(args.data)
    ckpt = _tiny_checkpoint(args.data, cfg, tmp)
    # Enough files that the command's start-up (~1 s: importing torch) is a small share.
    many = tmp / "many"
    for i in range(args.predict_files):
        link = many / f"part{i % 16}" / f"{i}{files[i % len(files)].suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(files[i % len(files)].resolve())
    results = []
    for _ in range(rounds):
        # Inference runs at the evaluation size (the decoded size, ~1.125x), as a trained
        # checkpoint does; see TrainConfig.eval_image_size.
        forward = pure_compute(
            cfg, compute, train=False, size=eval_size_for(cfg), batch=PredictConfig().batch_size
        )
        decode = pure_decode(files, cache_size_for(cfg.image_size))
        limit = 1 / (1 / decode + 1 / forward)
        seconds = cli_seconds(["predict", str(ckpt), str(many), "-o", str(tmp / "p.csv")])
        predict = args.predict_files / seconds
        results.append({"forward": forward, "decode": decode, "limit": limit,
                        "predict": predict, "ratio": predict / limit})  # fmt: skip
    median = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    median["ratios"] = ", ".join(f"{r['ratio']:.2f}" for r in results)  # in round order
    median["rounds"] = rounds
    # The fixed cost of any command (starting Python, importing torch, loading the model).
    one = ["predict", str(ckpt), str(files[0]), "-o", str(tmp / "one.csv")]
    median["startup"] = min(cli_seconds(one) for _ in range(2))
    return median


def cli_seconds(args: list[str]) -> float:
    """Seconds for one `python -m catnet ARGS` process (benchmark_accuracy's runner): anything
    but exit 0 stops the benchmark, as the timing of a failed command would be meaningless."""
    return run([sys.executable, "-m", "catnet", *args], ok=(0,))[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--skip-baseline", action="store_true", help="skip (a)'s slow baseline")
    parser.add_argument(
        "--predict-files", type=int, default=10_000, help="files for (c), cycling DATA"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (c); the median counts")
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_only:  # a fresh process, as a user's script: no catnet settings at all
        print(
            baseline_epoch_seconds(args.data, TrainConfig(model="cnn", image_size=args.image_size))
        )
        return
    setup_threads()
    cfg = TrainConfig(model="cnn", image_size=args.image_size)
    compute = select_compute("cpu", "auto")
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, compute {compute.name}, "
        f"{cfg.model} width {cfg.width} depth {cfg.depth}, {cfg.image_size} px, batch {cfg.batch_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ours = catnet_epochs(args.data, cfg, Path(tmp) / "cache", compute)
        train_ips = ours["n"] / ours["epoch"]
        compute_ips = pure_compute(
            cfg, compute, train=True, size=cfg.image_size, batch=cfg.batch_size
        )
        c = predict_against_limit(args, cfg, compute, Path(tmp), args.rounds)
    help_seconds = min(cli_seconds(["--help"]) for _ in range(3))
    print(f"\n{'':4}{'measurement':<62}{'value':>12}{'target':>10}")
    if not args.skip_baseline:
        base = fresh_baseline_seconds(args)
        print(
            f"(a) epoch: default pipeline {base:.1f} s / catnet {ours['epoch']:.1f} s{'':19}"
            f"{base / ours['epoch']:>10.1f}x{'>= 3x':>10}"
        )
        # The same pipeline with catnet's allocator setting (keep_freed_memory), which helps
        # it too: shown so that the gain of that one setting is not counted as ours alone.
        tuned = baseline_epoch_seconds(args.data, cfg)
        print(
            f"(a') the same, with catnet's malloc setting: {tuned:.1f} s / {ours['epoch']:.1f} s"
            f"{'':9}{tuned / ours['epoch']:>10.1f}x{'reported':>10}"
        )
    print(
        f"(b) training {train_ips:.0f} img/s / pure compute {compute_ips:.0f} img/s{'':20}"
        f"{train_ips / compute_ips:>11.2f}{'>= 0.8':>10}"
    )
    print(
        f"(c) predict {c['predict']:.0f} img/s / limit {c['limit']:.0f} (decode {c['decode']:.0f}, "
        f"forward {c['forward']:.0f}){'':3}{c['ratio']:>9.2f}{'>= 0.8':>10}"
    )
    print(f"    (the median of {c['rounds']} rounds; each round's ratio: {c['ratios']})")
    steady = (args.predict_files - 1) / max(args.predict_files / c["predict"] - c["startup"], 1e-9)
    print(
        f"(c') predict without its {c['startup']:.1f} s start-up: {steady:.0f} img/s / limit "
        f"{c['limit']:.0f}{'':14}{steady / c['limit']:>9.2f}{'>= 0.8':>10}"
    )
    print(
        f"(d) cache build {ours['cache_build']:.1f} s for {ours['n']} pictures; "
        f"`catnet --help` {help_seconds:.2f} s"
    )


def _tiny_checkpoint(data: Path, cfg: TrainConfig, tmp: Path) -> Path:
    """A checkpoint of the benchmarked architecture (weights untrained: speed does not care)."""
    from catnet.models.checkpoint import make_checkpoint, save_checkpoint
    from catnet.models.networks import architecture_from_config

    model = CNN(cfg.width, cfg.depth, cfg.activation, cfg.dropout)
    payload = make_checkpoint(
        model.state_dict(),
        arch=architecture_from_config(cfg, cfg.image_size),
        classes={"positive": "cats", "names": ["cats", "dogs"], "labels": ["not_cat", "cat"]},
        preprocessing={"decode_size": cache_size_for(cfg.image_size), "image_size": eval_size_for(cfg),
                       "mean": list(MEAN), "std": list(STD)},
        threshold=0.5, temperature=1.0, tta=False, train_config={}, metrics={},
    )  # fmt: skip
    return save_checkpoint(payload, tmp / "speed.pt")


if __name__ == "__main__":
    main()
