"""Open-set check: what "not cat" learned from dogs says about cars, with and without the check.

For each split, DATA (cats/ and dogs/) is split 80/20 as in benchmark_accuracy.py; `catnet
train` learns cats against dogs on the 80 % as a user would. Then, with the check on and off in
the same process:
  - assorted pictures that are neither cats nor dogs (the sample photos that ship in
    scikit-image, scikit-learn and matplotlib, minus the cat, with four corner crops of each
    large one; plus the demo's synthetic cars, birds, houses and noise drawn with another seed;
    no more than half synthetic): the share tagged cat;
  - the held-out 20 %: accuracy, and the share of the cats tagged cat that stay cat;
  - cats from elsewhere: the held-out cats cut to 64 x 64 px (catnet scales them up), and
    scikit-image's chelsea: the share of those tagged cat that stay cat;
  - predict's time on the held-out folder, check on against off (alternating, median of
    `--rounds` each), as a ratio, with the load average of the machine.

    python scripts/benchmark_openset.py --data ../shared/data/cats-vs-dogs-dev \
        --models pretrained,cnn --splits 3 --time-budget 120

Runs are kept under --out; a split whose best.pt exists is not trained again.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_accuracy import run, split_folder

SYNTHETIC_KINDS = ("cars", "birds", "houses", "noise")
SKIMAGE_PICTURES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "microaneurysms",
)  # fmt: skip  (every skimage.data picture but chelsea/cat and the non-photographic arrays)
MATPLOTLIB_PICTURES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def packaged_pictures() -> dict[str, Image.Image]:
    """The sample pictures that ship inside scikit-image, scikit-learn and matplotlib."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {f"skimage_{n}": _rgb(getattr(skimage.data, n)()) for n in SKIMAGE_PICTURES}
    samples = load_sample_images()
    for name, pixels in zip(samples.filenames, samples.images, strict=True):
        out[f"sklearn_{Path(name).stem}"] = _rgb(pixels)
    for name in MATPLOTLIB_PICTURES:
        with matplotlib.cbook.get_sample_data(name) as fh:
            out[f"mpl_{Path(name).stem}"] = Image.open(fh).convert("RGB")
    return out


def _rgb(pixels: np.ndarray) -> Image.Image:
    pixels = np.asarray(pixels)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, -1)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


def write_assorted(out: Path, synthetic_per_kind: int = 15, seed: int = 7) -> dict[str, int]:
    """out/real_*.png (whole packaged pictures), out/crop_*.png (four corner crops, 60 % of
    the short side, of those at least 300 px), out/synth_*.png (demo kinds, another seed)."""
    from catnet.demo.synthetic import draw_image

    out.mkdir(parents=True, exist_ok=True)
    counts = {"whole": 0, "crops": 0, "synthetic": 0}
    for name, img in packaged_pictures().items():
        img.save(out / f"real_{name}.png")
        counts["whole"] += 1
        w, h = img.size
        if min(w, h) >= 300:
            s = int(0.6 * min(w, h))
            for i, (x, y) in enumerate([(0, 0), (w - s, 0), (0, h - s), (w - s, h - s)]):
                img.crop((x, y, x + s, y + s)).save(out / f"crop_{name}_{i}.png")
                counts["crops"] += 1
    for kind in SYNTHETIC_KINDS:
        for i in range(synthetic_per_kind):
            rng = random.Random(f"{seed}:assorted:{kind}:{i}")
            draw_image(kind, rng, 64).save(out / f"synth_{kind}_{i}.png")
            counts["synthetic"] += 1
    return counts


def write_other_cats(test_cats: Path, out: Path) -> None:
    """out/64px/: the held-out cats cut to 64 x 64; out/chelsea.png: scikit-image's cat."""
    import skimage.data

    (out / "64px").mkdir(parents=True, exist_ok=True)
    for f in sorted(test_cats.iterdir()):
        with Image.open(f) as img:
            ImageOps.fit(img.convert("RGB"), (64, 64)).save(out / "64px" / f"{f.stem}.png")
    Image.fromarray(skimage.data.chelsea()).save(out / "chelsea.png")


def labels(model: object, paths: list[str], open_set: bool) -> tuple[dict[str, str], float]:
    """{path: label} from catnet's streaming predict, and its wall time in seconds."""
    from catnet.config import PredictConfig
    from catnet.predicting.prediction import predict

    rows: dict[str, str] = {}
    started = time.perf_counter()
    predict(model, paths, PredictConfig(open_set=open_set),
            on_row=lambda r: rows.__setitem__(r.path, r.label))  # fmt: skip
    return rows, time.perf_counter() - started


def kept(before: dict[str, str], after: dict[str, str]) -> tuple[int, int]:
    """(tagged cat without the check, of those still cat with it)."""
    cats = [p for p, label in before.items() if label == "cat"]
    return len(cats), sum(after[p] == "cat" for p in cats)


def measure(best: Path, test: Path, other: Path, assorted: Path, rounds: int) -> dict:
    from catnet.predicting.prediction import load_model

    model = load_model(best)
    if model.open_set is None:
        sys.exit(f"{best} has no open-set check (trained before it existed?)")
    res = {}
    off, on = (labels(model, [str(test)], flag)[0] for flag in (False, True))
    truth = {p: ("cat" if Path(p).parent.name == "cats" else "not") for p in off}
    res["acc_off"] = np.mean([(off[p] == "cat") == (truth[p] == "cat") for p in off])
    res["acc_on"] = np.mean([(on[p] == "cat") == (truth[p] == "cat") for p in on])
    n, k = kept({p: v for p, v in off.items() if truth[p] == "cat"}, on)
    res["cats_kept"] = k / max(1, n)
    for name, folder in (("64px", other / "64px"), ("chelsea", other / "chelsea.png")):
        before, after = (labels(model, [str(folder)], flag)[0] for flag in (False, True))
        res[f"{name}_n"], res[f"{name}_kept"] = kept(before, after)
    a_off, a_on = (labels(model, [str(assorted)], flag)[0] for flag in (False, True))
    res["assorted_n"] = len(a_off)
    res["assorted_cat_off"] = sum(v == "cat" for v in a_off.values())
    res["assorted_cat_on"] = sum(v == "cat" for v in a_on.values())
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):  # alternating, so a change in the machine's load hits both alike
        for flag in (False, True):
            times[flag].append(labels(model, [str(test)], flag)[1])
    res["time_ratio"] = statistics.median(times[True]) / statistics.median(times[False])
    res["forward_ratio"], res["check_share"] = forward_ratio(model, test, rounds + 1)
    res["seconds_off"] = statistics.median(times[False])
    load = Path("/proc/loadavg")
    res["loadavg"] = load.read_text().split()[0] if load.exists() else "?"
    return res


def forward_ratio(model: object, test: Path, rounds: int) -> tuple[float, float]:
    """Network time with the check over network time without it, on one batch of 32 held-out
    pictures already decoded (no decoding noise); and the k-NN scoring's time alone as a share
    of the network's."""
    import torch

    from catnet.data.pixels import decode_square

    files = sorted(p for p in test.rglob("*") if p.is_file())[:32]
    batch = torch.from_numpy(np.stack([decode_square(f, model.decode_size) for f in files]))
    times: dict[bool, list[float]] = {False: [], True: []}
    model.logits_and_scores(batch, None, True)  # warm-up
    for _ in range(rounds):
        for flag in (False, True):
            started = time.perf_counter()
            model.logits_and_scores(batch, None, flag)
            times[flag].append(time.perf_counter() - started)
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    # The check's own arithmetic (k-NN over the stored training features), timed alone: what
    # it adds, without the noise of a shared machine's network timings.
    from catnet.scoring.openset import capture_features, mean_features

    with capture_features(model.inference_module) as seen:
        model.logits_and_scores(batch, False, False)
    features = mean_features(seen, len(batch)).to(model.open_set.bank.device)
    check = []
    for _ in range(10):
        started = time.perf_counter()
        model.open_set.scores(features)
        check.append(time.perf_counter() - started)
    return ratio, statistics.median(check) / statistics.median(times[False])


def report(model: str, seed: int, r: dict) -> None:
    n = r["assorted_n"]
    print(
        f"{model:10} split {seed}: assorted tagged cat {r['assorted_cat_off']}/{n} "
        f"({r['assorted_cat_off'] / n:.1%}) -> {r['assorted_cat_on']}/{n} "
        f"({r['assorted_cat_on'] / n:.1%}); held-out acc {r['acc_off']:.2%} -> {r['acc_on']:.2%} "
        f"(cost {100 * (r['acc_off'] - r['acc_on']):+.2f} points); cats kept {r['cats_kept']:.1%}; "
        f"64px cats kept {r['64px_kept']}/{r['64px_n']}; chelsea kept {r['chelsea_kept']}/"
        f"{r['chelsea_n']}; predict time on/off {r['time_ratio']:.3f}, network only "
        f"{r['forward_ratio']:.3f}, k-NN alone {r['check_share']:.2%} of the network "
        f"({r['seconds_off']:.1f} s off, load {r['loadavg']})",
        flush=True,
    )


def summary(model: str, results: list[dict]) -> None:
    rows = (
        ("assorted tagged cat, check off (%)", lambda r: r["assorted_cat_off"] / r["assorted_n"]),
        ("assorted tagged cat, check on (%)", lambda r: r["assorted_cat_on"] / r["assorted_n"]),
        ("held-out accuracy, check off (%)", lambda r: r["acc_off"]),
        ("held-out accuracy, check on (%)", lambda r: r["acc_on"]),
        ("accuracy cost (points)", lambda r: r["acc_off"] - r["acc_on"]),
        ("held-out cats still cat (%)", lambda r: r["cats_kept"]),
        ("64x64 cats still cat (%)", lambda r: r["64px_kept"] / max(1, r["64px_n"])),
        ("predict time, on / off (ratio x 100)", lambda r: r["time_ratio"]),
        ("network time, on / off (ratio x 100)", lambda r: r["forward_ratio"]),
        ("k-NN alone, share of network time (%)", lambda r: r["check_share"]),
    )
    print(f"{model}: over {len(results)} split(s), mean ± sd")
    for name, value in rows:
        values = [100 * value(r) for r in results]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:38} {statistics.mean(values):7.2f} ± {sd:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cats/ and dogs/ folders")
    parser.add_argument("--models", default="pretrained,cnn")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=2, help="timed predict runs, each way")
    parser.add_argument("--out", type=Path, default=Path("/tmp/catnet-bench-openset"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    assorted = args.out / "assorted"
    counts = write_assorted(assorted)
    print(f"assorted pictures: {counts} (packaged real pictures whole: {counts['whole']}; "
          f"crops of the large ones: {counts['crops']})", flush=True)  # fmt: skip
    for model in args.models.split(","):
        results = []
        for seed in range(args.first_seed, args.first_seed + args.splits):
            split = args.out / f"split{seed}"
            if not (split / "test").exists():
                split_folder(args.data, split, seed)
                write_other_cats(split / "test" / "cats", split / "other")
            run_dir = args.out / f"{model}-seed{seed}"
            if not (run_dir / "best.pt").exists():
                cmd = [sys.executable, "-m", "catnet", "train", str(split / "train"), "--model",
                       model, "--seed", str(seed), "--time-budget", str(args.time_budget),
                       "--out", str(run_dir)]  # fmt: skip
                _, seconds = run(cmd)
                print(f"{model} split {seed}: trained in {seconds:.0f} s", flush=True)
            r = measure(run_dir / "best.pt", split / "test", split / "other", assorted, args.rounds)
            report(model, seed, r)
            results.append(r)
        summary(model, results)


if __name__ == "__main__":
    main()
