"""Open-set check: what "not cat" learned from dogs says about cars, variant by variant.

For each split, DATA (cats/ and dogs/) is split 80/20 as in benchmark_accuracy.py; `catnet
train` learns cats against dogs on the 80 % as a user would. Then every variant of the check
(scoring.openset.OpenSetFit: class-aware or not, where the threshold comes from, its quantile,
k, the bank's size; "today" is the rule before issue #25) is fitted on the features of that
same 80 % (a seeded 80/20 cut of it: bank and validation, as training makes them) and
measured, with the head's own answers, on the same pictures:
  - assorted pictures that are neither cats nor dogs (the sample photos that ship in
    scikit-image, scikit-learn and matplotlib, minus the cat, with four corner crops of each
    large one; plus the demo's synthetic cars, birds, houses and noise drawn with another seed;
    no more than half synthetic): the share tagged cat;
  - the held-out 20 %: accuracy, and how many of them the check calls unfamiliar (per 1,000);
  - cats from another source: the held-out cats cut to 64 x 64 px (catnet scales them up) and
    re-encoded as JPEG at quality 10: the share still cat;
  - with --rounds N: predict's time on the held-out folder with the stored check on against
    off (alternating, median of N each), as a ratio, with the load average of the machine.

    python scripts/benchmark_openset.py --data ../shared/data/cats-vs-dogs-dev \
        --models pretrained --splits 3 --time-budget 120

Runs are kept under --out; a split whose best.pt exists is not trained again. Features come
from the feature cache where the model trains only its head (the default recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
# The variant training fits now (scoring.openset.OpenSetFit's defaults).
ADOPTED = "val+loo, q0.995"
TODAY = "today (val, q.99, k10)"
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


OTHER_SOURCES = ("64px", "jpeg10")


def write_other_cats(test_cats: Path, out: Path) -> None:
    """out/64px/: the held-out cats cut to 64 x 64; out/jpeg10/: re-encoded at JPEG quality
    10 (another camera, another compression); out/chelsea.png: scikit-image's cat."""
    import skimage.data

    for name in OTHER_SOURCES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for f in sorted(test_cats.iterdir()):
        with Image.open(f) as img:
            ImageOps.fit(img.convert("RGB"), (64, 64)).save(out / "64px" / f"{f.stem}.png")
            img.convert("RGB").save(out / "jpeg10" / f"{f.stem}.jpg", quality=10)
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


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def logits_and_features(model: Any, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's raw logits (n,) and the penultimate features (n, F) the check scores, as
    predict computes them (flip-averaged with TTA): from the feature cache where the model
    trains only its head, else from the network."""
    from catnet.data.cache import default_cache_root
    from catnet.data.pixels import decode_square
    from catnet.labelling.cached_scores import head_only_scorer
    from catnet.models.forward import logits_for
    from catnet.scoring.openset import capture_features, mean_features

    scorer = head_only_scorer(model, default_cache_root())
    if scorer is not None:
        keep, plain, mirror = scorer.features(files)
        if len(keep) != len(files):
            sys.exit(f"{len(files) - len(keep)} unreadable pictures among {files[0].parent}")
        logits, _ = scorer.logits_and_scores(plain, mirror, False)
        return logits, (plain + mirror) / 2 if model.tta else plain
    logits, seen = [], []
    for start in range(0, len(files), 64):
        batch = torch.from_numpy(np.stack([decode_square(f, model.decode_size)
                                           for f in files[start : start + 64]]))  # fmt: skip
        with capture_features(model.inference_module) as batch_seen:  # PyTorch's pass, hooked
            logits.append(logits_for(model.inference_module, batch, model.image_size,
                                     model.compute, model.tta, model.mean, model.std).float())  # fmt: skip
        seen.append(mean_features(batch_seen, len(batch)))
    return torch.cat(logits), torch.cat(seen)


@dataclass
class Pictures:
    """One set of pictures as the check sees them."""

    logits: torch.Tensor  # (n,) raw
    features: torch.Tensor  # (n, F)
    cats: torch.Tensor  # (n,) bool: truly a cat

    def subset(self, rows: torch.Tensor) -> Pictures:
        return Pictures(self.logits[rows], self.features[rows], self.cats[rows])

    @classmethod
    def of(cls, model: Any, files: list[Path]) -> Pictures:
        logits, features = logits_and_features(model, files)
        cats = torch.tensor([f.parent.name == "cats" for f in files])
        return cls(logits, features, cats)


@dataclass(frozen=True)
class Variant:
    fit: Any = None  # scoring.openset.OpenSetFit; None: the check off
    # Class-aware: a bank and a threshold per class; a picture is scored against the training
    # pictures of the class the head gives it (the training cats for a picture called cat).
    per_class: bool = False
    # The head's confidence combined with the distance: a picture with p(cat) at or above
    # this is never unfamiliar, however far it lies (None: the distance alone decides).
    sure: float | None = None


def variants() -> dict[str, Variant]:
    from catnet.scoring.openset import OpenSetFit

    v = {"off": Variant(), TODAY: Variant(OpenSetFit(quantile=0.99, leave_one_out=False))}
    for q in (0.99, 0.995, 0.998, 0.999):
        v[f"val+loo, q{q}"] = Variant(OpenSetFit(quantile=q))
    for k in (1, 3, 5, 20, 50):
        v[f"val+loo, q.995, k{k}"] = Variant(OpenSetFit(k=k))
    for size in (250, 500, 1000):
        v[f"val+loo, q.995, bank {size}"] = Variant(OpenSetFit(bank_size=size))
    for q in (0.99, 0.995):
        v[f"class, val, q{q}"] = Variant(OpenSetFit(quantile=q, leave_one_out=False), True)
        v[f"class, val+loo, q{q}"] = Variant(OpenSetFit(quantile=q), True)
    for sure in (0.99, 0.999):
        v[f"val+loo, q.995, p>={sure} sure"] = Variant(OpenSetFit(), sure=sure)
    return v


def fitted(variant: Variant, bank: Pictures, val: Pictures, seed: int) -> tuple[Any, float]:
    """The variant fitted: a function from Pictures to (n,) scores in units of the threshold
    (above 1: unfamiliar), and the quantile its threshold sits at."""
    from catnet.scoring.openset import fit_open_set

    how = dataclasses.replace(variant.fit, seed=seed)
    if not variant.per_class:
        check = fit_open_set(bank.features, val.features, how)
        return lambda p: check.scores(p.features).cpu() / check.threshold, check.quantile
    cat, other = (fit_open_set(bank.features[bank.cats == c], val.features[val.cats == c], how)
                  for c in (True, False))  # fmt: skip

    def scores(p: Pictures) -> torch.Tensor:
        as_cat, as_other = cat.scores(p.features).cpu(), other.scores(p.features).cpu()
        return torch.where(p.logits >= 0, as_cat / cat.threshold, as_other / other.threshold)

    return scores, min(cat.quantile, other.quantile)


def decided_tensors(decision: Any, logits: torch.Tensor, scores: Any = None) -> Any:
    """decision.decide with its answers as tensors (the decision works in numpy)."""
    d = decision.decide(logits, scores)
    as_tensor = lambda a: None if a is None else torch.as_tensor(a)  # noqa: E731
    return dataclasses.replace(d, **{f: as_tensor(getattr(d, f)) for f in
                                     ("p_cat", "unfamiliar", "scores", "cat", "unsure")})  # fmt: skip


def measure_variants(model: Any, train: Path, sets: dict[str, Pictures], seed: int) -> dict:
    """{variant: {measure: value}} on the same pictures, each variant fitted on train's
    features: a seeded 80/20 cut into the bank's side and validation."""
    from catnet.scoring.decision import Decision
    from catnet.scoring.openset import Verdict

    t = Pictures.of(model, files_in(train))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(t.cats)))
    n_val = round(0.2 * len(order))
    val, fit = order[:n_val], order[n_val:]
    off = Decision(model.threshold, model.temperature)
    sets = {**sets, "validation": t.subset(val)}
    val_right = float((decided_tensors(off, t.logits[val]).cat == t.cats[val]).float().mean())
    out = {}
    for name, variant in variants().items():
        scorer = quantile = None
        if variant.fit is not None:
            scorer, quantile = fitted(variant, t.subset(fit), t.subset(val), seed)
        r = {}
        for set_name, pics in sets.items():
            unchecked = decided_tensors(off, pics.logits)
            decided, margin, pays = unchecked, float("nan"), float("nan")
            if scorer is not None:
                scores = scorer(pics)  # (n,) in units of the threshold
                if variant.sure is not None:  # sure of a cat: scored as familiar
                    scores = torch.where(unchecked.p_cat >= variant.sure, 0.0, scores)
                on = dataclasses.replace(off, unfamiliar_above=1.0)
                decided = decided_tensors(on, pics.logits, scores)
                # how far beyond the threshold the closest object the head calls cat lies
                if unchecked.cat.any():
                    margin = float(scores[unchecked.cat].min())
                # whether training would leave this check on (finalize's Verdict)
                pays = float(
                    Verdict.of(decided.unfamiliar, unchecked.cat, pics.cats, quantile).pays
                )
            cat = decided.cat
            unfamiliar = decided.unfamiliar if decided.unfamiliar is not None else cat & False
            r[set_name] = {
                "cat": float(cat.float().mean()),
                "kept": float(cat.sum() / unchecked.cat.sum().clamp_min(1)),
                "right": float((cat == pics.cats).float().mean()),
                "unfamiliar": float(unfamiliar.float().mean()),
                "margin": margin,
                "pays": pays,
            }
        other = [r[n] for n in OTHER_SOURCES]
        out[name] = {
            "objects tagged cat (%)": r["objects"]["cat"],
            "objects called cat: closest, % of threshold": r["objects"]["margin"],
            "held-out accuracy (%)": r["held-out"]["right"],
            "held-out unfamiliar (per 1,000)": 1000 * r["held-out"]["unfamiliar"],
            "64x64 cats still cat (%)": r["64px"]["cat"],
            "JPEG q10 cats still cat (%)": r["jpeg10"]["cat"],
            "other-source cats still cat (%)": sum(o["cat"] for o in other) / len(other),
            "of those the head calls cat, kept (%)": sum(o["kept"] for o in other) / len(other),
            # what training sees of the check (finalize: Verdict)
            "validation unfamiliar (per 1,000)": 1000 * r["validation"]["unfamiliar"],
            "validation accuracy cost (points)": val_right - r["validation"]["right"],
            "on by default: pays on validation (% of splits)": r["validation"]["pays"],
        }
    return out


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
    features = logits_and_features(model, files)[1].to(model.open_set.bank.device)
    check = []
    for _ in range(10):
        started = time.perf_counter()
        model.open_set.scores(features)
        check.append(time.perf_counter() - started)
    return ratio, statistics.median(check) / statistics.median(times[False])


def timing(model: Any, test: Path, rounds: int) -> str:
    """predict on the held-out folder with the stored check on against off, and one batch's
    network time likewise; a line of ratios."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):  # alternating, so a change in the machine's load hits both alike
        for flag in (False, True):
            times[flag].append(labels(model, [str(test)], flag)[1])
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    forward, share = forward_ratio(model, test, rounds + 1)
    load = Path("/proc/loadavg")
    loadavg = load.read_text().split()[0] if load.exists() else "?"
    return (f"predict time on/off {ratio:.3f}, network on/off {forward:.3f}, k-NN alone "
            f"{share:.2%} of the network ({statistics.median(times[False]):.1f} s off, "
            f"load {loadavg})")  # fmt: skip


def summary(model: str, results: list[dict]) -> None:
    """One row per variant: each measure's mean ± sd over the splits."""
    names = list(next(iter(results[0].values())))
    print(f"{model}: over {len(results)} split(s), mean ± sd")
    print(f"  {'variant':38}" + "".join(f" | {n:>20.20}" for n in names))
    print(f"  {'':38}" + "".join(f" | {n[20:]:>20.20}" for n in names))
    for variant in results[0]:
        cells = []
        for n in names:
            values = [(1 if "1,000" in n else 100) * r[variant][n] for r in results]
            values = [v for v in values if v == v]  # NaN: nothing to measure (check off)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):12.2f} ± {sd:5.2f}" if values else "–")
        print(f"  {variant:38}" + "".join(f" | {c:>20}" for c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cats/ and dogs/ folders")
    parser.add_argument("--models", default="pretrained,cnn")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=0, help="timed predict runs, each way")
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
            from catnet.predicting.prediction import load_model

            loaded = load_model(run_dir / "best.pt")
            sets = {"objects": Pictures.of(loaded, files_in(assorted)),
                    "held-out": Pictures.of(loaded, files_in(split / "test"))}  # fmt: skip
            for name in OTHER_SOURCES:
                cats = Pictures.of(loaded, files_in(split / "other" / name))
                sets[name] = dataclasses.replace(cats, cats=torch.ones_like(cats.cats))
            r = measure_variants(loaded, split / "train", sets, seed)
            today, new = r[TODAY], r[ADOPTED]
            n = len(sets["objects"].cats)
            print(f"{model:10} split {seed}: assorted tagged cat "
                  f"{round(today['objects tagged cat (%)'] * n)}/{n} (today) -> "
                  f"{round(new['objects tagged cat (%)'] * n)}/{n} ({ADOPTED})", flush=True)  # fmt: skip
            if args.rounds:
                print(f"{model:10} split {seed}: {timing(loaded, split / 'test', args.rounds)}")
            results.append(r)
        summary(model, results)


if __name__ == "__main__":
    main()
