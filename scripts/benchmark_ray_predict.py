"""`catnet predict --ray` against `catnet predict` on the same files, in the same run, on one
machine: images/s of each and their ratio (the overhead of going through Ray Data).

    python scripts/benchmark_ray_predict.py --data ../shared/data/cats-vs-dogs-dev \
        --checkpoint RUN_CNN/best.pt --checkpoint RUN_PRETRAINED/best.pt

Both are timed end to end as a user runs them (a fresh `python -m catnet` process each, torch's
import included), writing CSV rows. The Ray path is timed twice: against a Ray already running
on this machine (started here with every core, as a cluster would be: `--ray ADDRESS`), and with
`--ray local`, which starts and stops a Ray of its own inside the command. The rows of the two
paths are compared too (labels equal, largest p(cat) difference). `--ray ADDRESS` times against
a Ray that is already running instead of starting one. Timings on a shared machine are
inflated by other work: the load average is printed before and after. The "marginal" line takes
the start-up costs out (the time of a quarter of the files subtracted): the throughput a long job
sees.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

from benchmark_accuracy import run

from catnet.data.folders import IMAGE_SUFFIXES, list_files


def timed_predict(checkpoint: Path, files: list[str], out: Path, ray: str = "") -> float:
    """Seconds for one `catnet predict` process over files, writing out (benchmark_accuracy's
    runner: exit 1, some unreadable files, is still a full run)."""
    args = [sys.executable, "-m", "catnet", "predict", str(checkpoint), *files, "-o", str(out)]
    return run(args + (["--ray", ray] if ray else []))[1]


def compare(a: Path, b: Path) -> tuple[bool, float]:
    """(same paths and labels in the same order, largest |p_cat difference|)."""
    with a.open(newline="") as fa, b.open(newline="") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    same = [(r["path"], r["label"]) for r in rows_a] == [(r["path"], r["label"]) for r in rows_b]
    diff = max(
        (abs(float(x["p_cat"]) - float(y["p_cat"]))
         for x, y in zip(rows_a, rows_b, strict=True) if x["p_cat"] and y["p_cat"]),
        default=0.0,
    )  # fmt: skip
    return same, diff


def load() -> str:
    return (
        " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if os.path.exists("/proc/loadavg")
        else "n/a"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, action="append", required=True)
    parser.add_argument("--files", type=int, default=0, help="the first N pictures (0 = all)")
    parser.add_argument("--skip-local", action="store_true", help="skip the --ray local timing")
    parser.add_argument("--ray", default="", metavar="ADDRESS",
                        help="time against this running Ray (default: start one here with "
                             "every core, and stop it at the end)")  # fmt: skip
    args = parser.parse_args()
    import ray

    files = [str(p) for p in list_files(args.data, IMAGE_SUFFIXES)]
    files = files[: args.files] if args.files else files
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{len(files)} pictures from {args.data}; {cores} cores; load average {load()}")
    if args.ray:
        address = args.ray
    else:
        context = ray.init(num_cpus=cores, log_to_driver=False, include_dashboard=False)
        address = context.address_info["gcs_address"]
    header = f"{'checkpoint':<44} {'predict':>9} {'ray':>9} {'ratio':>6}"
    header += f" {'ray local':>10} {'ratio':>6}  rows"
    print(header + "\n" + " " * 45 + "img/s     img/s   ray/predict  img/s (with Ray's start)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for checkpoint in args.checkpoint:
                out = Path(tmp)
                timed_predict(checkpoint, files[:64], out / "warm.csv")  # page cache, imports
                quarter = files[: len(files) // 4]
                t_base = timed_predict(checkpoint, files, out / "base.csv")
                t_ray = timed_predict(checkpoint, files, out / "ray.csv", address)
                # Per picture, start-up costs taken out: the difference with a quarter of them.
                t_base4 = timed_predict(checkpoint, quarter, out / "base4.csv")
                t_ray4 = timed_predict(checkpoint, quarter, out / "ray4.csv", address)
                local = 0.0
                if not args.skip_local:
                    local = len(files) / timed_predict(checkpoint, files, out / "l.csv", "local")
                same, diff = compare(out / "base.csv", out / "ray.csv")
                n, more = len(files), len(files) - len(quarter)
                base, on_ray = n / t_base, n / t_ray
                print(
                    f"{str(checkpoint)[-44:]:<44} {base:>9.1f} {on_ray:>9.1f} {on_ray / base:>6.2f}"
                    f" {local:>10.1f} {local / base:>6.2f}  "
                    f"{'same labels' if same else 'LABELS DIFFER'}, max |dp| {diff:.1e}\n"
                    f"{'  marginal (start-up taken out)':<44} {more / (t_base - t_base4):>9.1f}"
                    f" {more / (t_ray - t_ray4):>9.1f} {(t_base - t_base4) / (t_ray - t_ray4):>6.2f}",
                    flush=True,
                )
    finally:
        if not args.ray:
            ray.shutdown()
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
