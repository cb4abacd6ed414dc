"""The pretrained backbones as catnet's default head sees them: frozen features (on the
inference engine, at each backbone's native size) + logistic regression, on the same splits.

    python scripts/benchmark_backbones.py --data ../shared/data/cats-vs-dogs-dev [--splits 3]

For each backbone and split (80/20, as benchmark_accuracy.py): held-out accuracy with every
training photo, with 20 and with 10 photos a class; and the engine's feature rate (pictures/s,
each with its mirror image, as training computes them). Prints mean ± spread over the splits.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_accuracy import split_folder

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def features_of(name: str, files: list[Path]) -> tuple[np.ndarray, float]:
    """(n, F) plain features of files at name's native size, and pictures/s of the pass."""
    from catnet.data.cache import default_cache_root, load_pixels
    from catnet.models.pretrained import PretrainedNet, input_defaults, load_imagenet_backbone
    from catnet.runtime.compute import select_compute
    from catnet.training.features import FrozenPass, cached_features, feature_store

    side, mean, std = input_defaults(name)
    net = PretrainedNet(name).eval()
    load_imagenet_backbone(net, name)
    frozen = FrozenPass(net, 0, side, mean, std, select_compute(), "auto")
    store = feature_store(net, name, side, 0, frozen.name, default_cache_root())
    table = load_pixels(files, side, cache_root=default_cache_root())
    ok = np.flatnonzero(table.ok)
    rate_batch = table.array[table.slots[ok[:128]]]
    frozen(__import__("torch").from_numpy(np.ascontiguousarray(rate_batch[:8])))  # warm-up
    started = time.monotonic()
    frozen(__import__("torch").from_numpy(np.ascontiguousarray(rate_batch)))
    rate = len(rate_batch) / (time.monotonic() - started)
    plain, _ = cached_features(frozen, [files[i] for i in ok], table.array, table.slots[ok], store)
    out = np.zeros((len(files), plain.shape[1]), np.float32)
    out[ok] = plain.numpy()
    return out, rate


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          per_class: int, seed: int) -> float:  # fmt: skip
    from sklearn.linear_model import LogisticRegression

    if per_class:
        rng = random.Random(f"probe:{seed}:{per_class}")
        keep = [i for c in (0, 1) for i in rng.sample(list(np.flatnonzero(y_train == c)),
                                                      per_class)]  # fmt: skip
        x_train, y_train = x_train[keep], y_train[keep]
    fitted = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    return float(fitted.score(x_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-backbones"))
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    for name in args.backbones.split(","):
        res = results.setdefault(name, {"all": [], "20": [], "10": [], "rate": []})
        for seed in range(args.splits):
            train_dir, test_dir = split_folder(args.data, args.out / f"split-seed{seed}", seed)
            sets = []
            for root in (train_dir, test_dir):
                files = sorted(f for c in sorted(root.iterdir()) for f in c.iterdir())
                labels = np.array([int(f.parent.name in ("cat", "cats")) for f in files])
                feats, rate = features_of(name, [f.resolve() for f in files])
                sets.append((feats, labels))
            res["rate"].append(rate)
            (x_tr, y_tr), (x_te, y_te) = sets
            for per_class, key in ((0, "all"), (20, "20"), (10, "10")):
                res[key].append(probe(x_tr, y_tr, x_te, y_te, per_class, seed))
        print(name, {k: f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}"
                     for k, v in res.items()}, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
