"""Does showing the least-sure pictures first teach the model faster than a random order?

Simulates a `catnet label` user with the library functions the page calls: the queue ranking
(catnet.labelling.queue), the answer (LabelSession.label: `catnet correct`'s code, moving the file)
and Teach (catnet.labelling.teach.teach: `catnet finetune`'s code, a first `catnet train` when
there is no model yet).

For each seed: 10 cats + 10 dogs of the dev photos start tagged, `--test` photos are held out,
the rest go into DIR/unlabeled/ with their truth hidden from the model. Each round the user tags
`--per-round` pictures (least sure first, or random) and Teach runs; held-out accuracy is
measured after every Teach. Also measured: of the pictures the model had wrong when they were
tagged (the corrections), the share the model gets right after that round's Teach.

    python scripts/benchmark_active.py --data ../shared/data/cats-vs-dogs-dev \
        --rounds 9 --seeds 3 --plot active.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ORDERS = ("least-sure", "random")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="cats/ and dogs/ of photos")
    ap.add_argument("--model", default="pretrained", help="network of the first model")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9, help="rounds after the first model")
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--start", type=int, default=10, help="tagged pictures per class at first")
    ap.add_argument("--test", type=int, default=400, help="held-out photos")
    ap.add_argument("--pool", type=int, default=0, help="untagged photos (0 = all the rest)")
    ap.add_argument("--first-epochs", type=int, default=30)
    ap.add_argument("--teach-epochs", type=int, default=0, help="0 = the page's default")
    ap.add_argument("--image-size", type=int, default=0, help="first model's input side (0 = auto)")
    ap.add_argument("--orders", default=",".join(ORDERS), help="which orders to run")
    ap.add_argument("--plot", type=Path, default=Path("active.png"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [temp]")
    ap.add_argument(
        "--summarize", action="store_true", help="only summarize the seeds finished in --work"
    )
    return ap.parse_args()


def photos(data: Path) -> list[tuple[Path, str]]:
    out = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = "cat" if folder.name.lower() in ("cat", "cats") else "not_cat"
        out += [(p, label) for p in sorted(folder.iterdir()) if p.is_file()]
    return out


def setup(args: argparse.Namespace, seed: int, root: Path) -> tuple[Path, list, dict[str, str]]:
    """root/data (cats/ dogs/ start pictures + unlabeled/), the held-out samples, the truth."""
    from catnet.data.folders import Sample

    everything = photos(args.data)
    random.Random(seed).shuffle(everything)
    test, rest = everything[: args.test], everything[args.test :]
    cats = [p for p in rest if p[1] == "cat"][: args.start]
    dogs = [p for p in rest if p[1] == "not_cat"][: args.start]
    pool = [p for p in rest if p not in cats and p not in dogs]
    pool = pool[: args.pool] if args.pool else pool
    data = root / "data"
    truth: dict[str, str] = {}
    for folder, items in (("cats", cats), ("dogs", dogs), ("unlabeled", pool)):
        (data / folder).mkdir(parents=True)
        for path, label in items:
            name = f"{path.parent.name}-{path.name}"  # unique across source folders
            shutil.copy2(path, data / folder / name)
            truth[name] = label
    held = [Sample(p, int(label == "cat"), p.parent.name) for p, label in test]
    return data, held, truth


def learnt_count(model: object, wrong: list[tuple[Path, str]]) -> int:
    """How many of the (picture, true label) pairs the model now tags right."""
    from catnet.labelling.queue import score_pictures

    new = score_pictures(model, [p for p, _ in wrong])
    said = {p: "cat" if q >= model.threshold else "not_cat" for p, q in new.items()}  # type: ignore[attr-defined]
    return sum(said.get(p) == label for p, label in wrong)


def run_one(args: argparse.Namespace, seed: int, order: str, root: Path) -> dict:
    from catnet.config import LabelConfig, TrainConfig
    from catnet.labelling.queue import (
        least_sure_first,
        random_order,
        score_pictures,
        untagged_pictures,
    )
    from catnet.labelling.session import open_session
    from catnet.labelling.teach import accuracy_on, teach
    from catnet.predicting.prediction import load_model

    data, held, truth = setup(args, seed, root)
    session = open_session(data, LabelConfig(seed=seed), None)
    runs = root / "runs"
    first = TrainConfig(
        model=args.model, epochs=args.first_epochs, seed=seed, image_size=args.image_size
    )
    result = teach(data, None, runs, args.teach_epochs, first)
    checkpoint, curve = result.checkpoint, []
    curve.append((2 * args.start, accuracy_on(checkpoint, held)))
    tick = time.monotonic()
    fixed = corrections = 0
    per_round: list[tuple[int, int]] = []  # (learnt, corrections) of each round
    for r in range(1, args.rounds + 1):
        model = load_model(checkpoint)
        pool = untagged_pictures(session.unlabeled_dir)
        if order == "least-sure":
            scores = score_pictures(model, pool)
            picked = least_sure_first(pool, scores)[: args.per_round]
        else:
            picked = random_order(pool, seed * 1000 + r)[: args.per_round]
            scores = score_pictures(model, picked)
        session.use_model(model)  # as the page's ranking leaves it: the answers log what
        session.scores, session.ranked = scores, True  # the model said (only misses weigh more)
        wrong = []  # (new path, truth) of the pictures the model had wrong: the corrections
        for path in picked:
            label = truth[path.name]
            session.label(path, label)
            said = "cat" if scores.get(path, 0.5) >= model.threshold else "not_cat"
            if said != label:
                dest = session.actions[max(session.actions)].correction.dest
                wrong.append((dest, label))
        checkpoint = teach(data, checkpoint, runs, args.teach_epochs).checkpoint
        after = load_model(checkpoint)
        learnt = learnt_count(after, wrong)
        fixed, corrections = fixed + learnt, corrections + len(wrong)
        per_round.append((learnt, len(wrong)))
        acc = accuracy_on(after, held)
        curve.append((2 * args.start + r * args.per_round, acc))
        print(f"  seed {seed} {order:<10} labels {curve[-1][0]:>4}  held-out {acc:.1%}  "
              f"corrections learnt {learnt}/{len(wrong)}  ({time.monotonic() - tick:.0f} s)",
              flush=True)  # fmt: skip
        tick = time.monotonic()
    return {"curve": curve, "fixed": fixed, "corrections": corrections, "per_round": per_round}


def mean_curves(results: dict[str, list[dict]]) -> dict[str, list[tuple[int, float, float]]]:
    """{order: [(labels used, mean held-out accuracy, sd over seeds)]} for the orders run."""
    means = {}
    for order, runs in results.items():
        rows = []
        for i, (labels, _) in enumerate(runs[0]["curve"] if runs else []):
            accs = [res["curve"][i][1] for res in runs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            rows.append((labels, statistics.mean(accs), sd))
        if rows:
            means[order] = rows
    return means


def summarize(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    means = mean_curves(results)
    print("\nheld-out accuracy (mean ± sd over seeds) against labels used")
    for i, (labels, _, _) in enumerate(next(iter(means.values()))):
        cells = "  ".join(f"{o} {m[i][1]:.1%} ± {m[i][2]:.1%}" for o, m in means.items())
        print(f"  {labels:>4} labels  {cells}")
    if set(ORDERS) <= set(means):
        top, target = means["random"][-1][0], means["random"][-1][1]
        # the same count of right photos can average to a different last bit: compare loosely
        reach = next((n for n, acc, _ in means["least-sure"] if acc >= target - 1e-9), None)
        print(
            f"\nrandom order reaches {target:.1%} with {top} labels; least-sure first reaches it "
            + (f"with {reach} labels ({reach / top:.0%} of them)" if reach else "not at all")
        )
    for order in means:
        fixed = sum(r["fixed"] for r in results[order])
        total = sum(r["corrections"] for r in results[order])
        share = f"{fixed / total:.0%}" if total else "n/a"
        print(f"corrections right after their Teach ({order}): {fixed} of {total} ({share})")
        for seed, run in enumerate(results[order]):
            rounds = " ".join(f"{a}/{b}" for a, b in run.get("per_round", []))
            print(f"  seed {seed}, round by round: {rounds}")
    plot(args, means)


def plot(args: argparse.Namespace, means: dict[str, list[tuple[int, float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (order, rows) in enumerate(means.items()):
        shift = (k - (len(means) - 1) / 2) * 1.5  # labels: keeps the error bars apart
        xs = [n + shift for n, _, _ in rows]
        ys = [m * 100 for _, m, _ in rows]
        sd = [s * 100 for _, _, s in rows]
        name = "least sure first" if order == "least-sure" else order
        ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=f"{name} (mean ± sd)")
    if "random" in means:
        top, target, _ = means["random"][-1]
        ax.axhline(target * 100, color="grey", ls="--", lw=1,
                   label=f"random order at {top} labels ({target:.1%})")  # fmt: skip
        ax.axvline(top / 2, color="grey", ls=":", lw=1, label=f"goal: reach it by {top // 2}")
    ax.set_xlabel("tagged pictures (labels used)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"catnet label: least sure first vs random\n"
                 f"{args.model} model, {args.seeds} seeds, {args.test} held-out photos")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")


def main() -> None:
    args = parse()
    work = Path(args.work or tempfile.mkdtemp(prefix="catnet-active-"))
    os.environ.setdefault("CATNET_CACHE", str(work / "cache"))  # decoded pixels, shared
    done_file = work / "results.json"  # each finished run, so a long benchmark can be cut short
    results: dict[str, list[dict]] = {o: [] for o in ORDERS}
    if args.summarize and done_file.exists():
        results = json.loads(done_file.read_text())
        done = min(len(runs) for runs in results.values() if runs)
        results = {o: runs[:done] for o, runs in results.items()}
        args.seeds = done
        summarize(args, results)
        return
    started = time.monotonic()
    for seed in range(args.seeds):
        for order in args.orders.split(","):
            results[order].append(run_one(args, seed, order, work / f"seed{seed}-{order}"))
            done_file.write_text(json.dumps(results))
    summarize(args, results)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{time.monotonic() - started:.0f} s; load {load}")


if __name__ == "__main__":
    main()
