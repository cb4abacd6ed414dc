"""The inference engine (catnet.engine, OpenVINO) against PyTorch (`--engine torch`), in one run.

    python scripts/benchmark_engine.py --data ../shared/data/cats-vs-dogs-dev [--splits 3]

Per split (80/20, as benchmark_accuracy.py): `catnet train` on the 80 % with cold caches on each
engine (whole commands, decoding and features included), then on the held-out 20 %: agreement
of the engine's answers with PyTorch's (labels, p_cat, open-set scores and flags, accuracy) and
the paired accuracy difference of flip TTA (on - off). On split 0's checkpoint: `catnet predict`
over every photo of DATA on each engine (images/s and peak memory of the whole command, all its
processes), the engine's forward rate (bf16 where the CPU has it, and f32: what a CPU without
AMX gets) and the decode rate, and a one-picture predict on a warm cache (wall time, memory).
Peak memory is the largest sum of resident memory over the command's process tree, sampled
every 20 ms. Prints one table; --json FILE keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_accuracy import split_folder
from benchmark_speed import pure_decode

from catnet.data.folders import list_files
from catnet.data.pixels import decode_square


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def timed(args: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(seconds, peak bytes of the process tree, stdout) of `python -m catnet ARGS`."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "catnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - started
    watcher.join()
    if proc.returncode not in (0, 1):
        sys.exit(f"failed ({proc.returncode}): catnet {' '.join(args)}\n{err[-3000:]}")
    return seconds, peak[0], out


def forward_rate(model, n: int = 320) -> float:
    """Pictures/s of the model's forward pass (and open-set score) on ready uint8 batches of
    64 at its decode size."""
    batch = random_batch(model.decode_size)
    model.logits_and_scores(batch, tta=False)  # warm-up (and compile); one view a picture
    started = time.monotonic()
    for _ in range(n // len(batch)):
        model.logits_and_scores(batch, tta=False)
    return (n // len(batch)) * len(batch) / (time.monotonic() - started)


def random_batch(side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8)


def f32_rate(checkpoint: Path, n: int = 320) -> float:
    """The engine's answer graph compiled in f32: what a CPU without AMX/AVX512-BF16 runs."""
    from catnet.engine.runtime import Compiled
    from catnet.predicting.prediction import load_model

    model = load_model(checkpoint, engine="openvino")
    assert model.engine is not None
    batch = random_batch(model.decode_size)
    model.logits_and_scores(batch[:1], tta=False)  # builds the graph without TTA if missing
    graph = Compiled(model.engine.store.graph("answer"), None, exact=True)
    graph(batch)
    started = time.monotonic()
    for _ in range(n // len(batch)):
        graph(batch)
    return (n // len(batch)) * len(batch) / (time.monotonic() - started)


def agreement(checkpoint: Path, test_dir: Path) -> dict:
    """Engine against PyTorch on the held-out photos, both without TTA and as trained."""
    from catnet.predicting.prediction import load_model

    files = [f for c in sorted(test_dir.iterdir()) for f in list_files(c)]
    truth = np.array([f.parent.name in ("cat", "cats") for f in files])
    on_torch = load_model(checkpoint, engine="torch")
    on_engine = load_model(checkpoint, engine="openvino")
    pixels = np.stack([decode_square(f, on_torch.decode_size) for f in files])
    slots = np.arange(len(files))
    out: dict = {"n": len(files)}
    answers = {}
    for name, model in (("torch", on_torch), ("engine", on_engine)):
        for tta in (False, True):
            decided = model.decision().decide(*model.logits_and_scores_of(pixels, slots, 64, tta))
            answers[name, tta] = decided
            out[f"accuracy_{name}_{'tta' if tta else 'plain'}"] = float(
                ((np.array(decided.labels) == "cat") == truth).mean()
            )
    a, b = answers["torch", on_torch.tta], answers["engine", on_torch.tta]
    diff = np.abs(a.p_cat - b.p_cat)
    out.update(
        labels_agree=float((np.array(a.labels) == np.array(b.labels)).mean()),
        p_diff_mean=float(diff.mean()),
        p_diff_p99=float(np.quantile(diff, 0.99)),
    )
    if a.scores is not None and b.scores is not None:
        rel = np.abs(a.scores - b.scores) / np.maximum(a.scores, 1e-6)
        out.update(
            score_rel_mean=float(rel.mean()),
            score_rel_p99=float(np.quantile(rel, 0.99)),
            flags_agree=float((a.unfamiliar == b.unfamiliar).mean()),
            unfamiliar_torch=int(a.unfamiliar.sum()),
            unfamiliar_engine=int(b.unfamiliar.sum()),
        )
    return out


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-engine"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-train", action="store_true", help="reuse the runs in --out")
    parser.add_argument(
        "--baseline-backbone", default="tf_efficientnet_lite0",
        help="the PyTorch side's backbone: today's default, so that the ratios compare the "
        "new default on the engine with what users had",
    )  # fmt: skip
    parser.add_argument(
        "--backbone", default="", help="the engine side's backbone ('' = catnet's default); "
        "the same as --baseline-backbone gives the engine's own speed-up",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict = {"splits": []}
    for seed in range(args.splits):
        train_dir, test_dir = split_folder(args.data, args.out / f"split-seed{seed}", seed)
        split: dict = {"seed": seed}
        for engine in ("torch", "openvino"):
            run_dir = args.out / f"{engine}-seed{seed}"
            if args.skip_train and (run_dir / "best.pt").exists():
                continue
            cold = args.out / f"cold-cache-{engine}-seed{seed}"
            shutil.rmtree(cold, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            env = {**os.environ, "CATNET_CACHE": str(cold), "CATNET_ENGINE_CACHE": str(cold / "e")}
            backbone = args.baseline_backbone if engine == "torch" else args.backbone
            extra = ["--backbone", backbone] if backbone else []
            seconds, _, _ = timed(["train", str(train_dir), "--out", str(run_dir), "--seed",
                                   str(seed), "--engine", engine, *extra], env)  # fmt: skip
            split[f"train_seconds_{engine}"] = seconds
            print(f"split {seed}: train on {engine}: {seconds:.1f} s", flush=True)
        split.update(agreement(args.out / f"openvino-seed{seed}" / "best.pt", test_dir))
        print(json.dumps(split), flush=True)
        rows["splits"].append(split)

    checkpoint = args.out / "openvino-seed0" / "best.pt"
    files = list_files(args.data)
    from catnet.predicting.prediction import load_model

    model = load_model(checkpoint, engine="openvino")
    speed: dict = {"files": len(files)}
    speed["forward_engine"] = forward_rate(model)
    speed["forward_engine_f32"] = f32_rate(checkpoint)
    speed["forward_torch"] = forward_rate(load_model(checkpoint, engine="torch"))
    speed["forward_torch_baseline"] = forward_rate(
        load_model(args.out / "torch-seed0" / "best.pt", engine="torch")
    )
    speed["decode"] = pure_decode(files, model.decode_size)
    baseline = args.out / "torch-seed0" / "best.pt"  # today's default, on PyTorch
    for engine, ckpt in (("torch", baseline), ("openvino", checkpoint)):
        out_csv = args.out / f"predict-{engine}.csv"
        out_csv.unlink(missing_ok=True)
        seconds, peak, _ = timed(["predict", str(ckpt), str(args.data), "-o", str(out_csv),
                                  "--engine", engine])  # fmt: skip
        speed[f"predict_{engine}_per_s"] = len(files) / seconds
        speed[f"predict_{engine}_peak_mb"] = peak / 1e6
    one = str(files[0])
    timed(["predict", str(checkpoint), one, "--json"])  # the cache is warm after this
    for engine, ckpt in (("torch", baseline), ("openvino", checkpoint)):
        runs = [timed(["predict", str(ckpt), one, "--json", "--engine", engine])
                for _ in range(5)]  # fmt: skip
        speed[f"one_{engine}_seconds"] = statistics.median(r[0] for r in runs)
        speed[f"one_{engine}_peak_mb"] = statistics.median(r[1] for r in runs) / 1e6
    rows["speed"] = speed
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def report(rows: dict) -> None:
    s, splits = rows["speed"], rows["splits"]
    limit = min(s["decode"], s["forward_engine"])
    col = lambda key: [r[key] for r in splits if key in r]  # noqa: E731
    lines = [
        ("predict, whole command, images/s (engine / torch)",
         f"{s['predict_openvino_per_s']:.1f} / {s['predict_torch_per_s']:.1f}",
         f"{s['predict_openvino_per_s'] / s['predict_torch_per_s']:.2f}x", ">= 2.5x"),
        ("  as a share of min(decode, engine forward)",
         f"{s['predict_openvino_per_s']:.1f} / {limit:.1f}",
         f"{s['predict_openvino_per_s'] / limit:.2f}", ">= 0.8"),
        ("forward images/s: engine (this CPU) / engine f32 / torch, same checkpoint",
         f"{s['forward_engine']:.0f} / {s['forward_engine_f32']:.0f} / {s['forward_torch']:.0f}",
         f"{s['forward_engine'] / s['forward_torch']:.2f}x", ""),
        ("forward images/s: torch, the baseline's checkpoint",
         f"{s['forward_torch_baseline']:.0f}", "", ""),
        ("decode images/s (every core)", f"{s['decode']:.0f}", "", ""),
        ("one picture, warm cache, s (engine / torch)",
         f"{s['one_openvino_seconds']:.2f} / {s['one_torch_seconds']:.2f}",
         f"{s['one_openvino_seconds'] / s['one_torch_seconds']:.2f}x", "<= 0.6 s"),
        ("one picture, peak MB (engine / torch)",
         f"{s['one_openvino_peak_mb']:.0f} / {s['one_torch_peak_mb']:.0f}", "", "<= 300 MB"),
        (f"{s['files']} photos, peak MB (engine / torch)",
         f"{s['predict_openvino_peak_mb']:.0f} / {s['predict_torch_peak_mb']:.0f}", "",
         "<= 600 MB"),
    ]  # fmt: skip
    if col("train_seconds_torch") and col("train_seconds_openvino"):
        ratios = [o / t for o, t in zip(col("train_seconds_openvino"), col("train_seconds_torch"),
                                        strict=True)]  # fmt: skip
        lines.append(("train, cold caches, s (engine / torch)",
                      f"{mean_sd(col('train_seconds_openvino'))} / "
                      f"{mean_sd(col('train_seconds_torch'))}", f"{mean_sd(ratios)}x",
                      "<= 0.5x"))  # fmt: skip
    tta = [a - b for a, b in zip(col("accuracy_engine_tta"), col("accuracy_engine_plain"),
                                 strict=True)]  # fmt: skip
    lines += [
        ("labels agree (share)", mean_sd(col("labels_agree")), "", ">= 0.999"),
        ("|p_cat| diff mean / p99", f"{mean_sd(col('p_diff_mean'))} / "
         f"{mean_sd(col('p_diff_p99'))}", "", "<= 0.005 / 0.03"),
        ("open-set score rel. diff mean / p99", f"{mean_sd(col('score_rel_mean'))} / "
         f"{mean_sd(col('score_rel_p99'))}", "", "<= 0.01"),
        ("unfamiliar flags agree (share)", mean_sd(col("flags_agree")), "", "1.0"),
        ("accuracy as trained, engine / torch",
         f"{mean_sd(col('accuracy_engine_tta'))} / {mean_sd(col('accuracy_torch_tta'))}", "",
         "within 0.001"),
        ("flip TTA: accuracy on - off (paired, engine)", mean_sd(tta), "", "noise -> off"),
    ]  # fmt: skip
    width = max(len(line[0]) for line in lines)
    for name, value, ratio, goal in lines:
        print(f"{name:<{width}}  {value:<28} {ratio:<14} {goal}")


if __name__ == "__main__":
    main()
