"""DATA_DIR to training-ready pixels: scan and split the folders, choose the image size,
decode through the cache, and say which pictures train how often (lessons count more)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catnet.config import TrainConfig, save_config
from catnet.curation.corrections import corrected_paths
from catnet.curation.reviewed import reviewed_paths
from catnet.data.augment import MEAN, STD
from catnet.data.cache import PixelTable, cache_size_for, default_cache_root, load_pixels
from catnet.data.folders import Dataset, Sample, scan_dataset
from catnet.data.pixels import open_picture
from catnet.errors import CatnetError
from catnet.training.runs import write_skipped


@dataclass
class PreparedData:
    dataset: Dataset
    image_size: int  # model input side in training (px): the random crops
    decode_size: int  # side of the decoded, cached pictures (px), a little larger
    eval_size: int  # side of the whole-picture view for validation and inference (px)
    pixels: np.ndarray  # (n_slots, decode_size, decode_size, 3) uint8, maybe memory-mapped
    train_slots: np.ndarray  # (n_train,) rows of pixels
    train_labels: np.ndarray  # (n_train,) int64, 1 = cat
    val_slots: np.ndarray
    val_labels: np.ndarray
    counts: dict[str, dict[str, int]]  # split -> class folder -> pictures used
    skipped: list[tuple[str, str]]  # (path, reason)
    train_repeat: np.ndarray | None = None  # (n_train,) times shown per epoch; corrections get more
    mean: tuple = MEAN  # per-channel normalisation the network expects (pixels in [0, 1])
    std: tuple = STD
    train_paths: list[Path] = field(default_factory=list)  # the file behind each train slot
    val_paths: list[Path] = field(default_factory=list)
    # (m,) rows of pixels a person tagged (catnet correct, catnet label's answers and
    # confirmations): the open-set check counts them as familiar (scoring.openset)
    tagged_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def auto_image_size(samples: list[Sample], cap: int, seed: int = 0) -> int:
    """Median short side of (up to 300 of) the pictures, rounded down to a multiple of 8 and
    kept in [32, cap]: tiny pictures are enlarged to 32 px (the least the CNN's stages need),
    large ones are not used at full size."""
    chosen = random.Random(seed).sample(samples, min(300, len(samples)))
    sides = []
    for s in chosen:
        try:
            # The header only; a picture over Pillow's own pixel limit still has a size.
            with open(s.path, "rb") as fh, open_picture(fh) as img:
                sides.append(min(img.size))
        except Exception:
            continue
    if not sides:
        return min(64, cap)
    median = sorted(sides)[len(sides) // 2]
    return int(max(32, min(cap, median // 8 * 8)))


def eval_size_for(cfg: TrainConfig) -> int:
    """The inference-time side (px); see TrainConfig.eval_image_size."""
    if cfg.model == "mlp":
        return cfg.image_size  # one input neuron per pixel: the size is part of the network
    if cfg.model == "pretrained":  # trained on whole pictures (cached features), seen alike
        return cfg.eval_image_size or cfg.image_size
    return cfg.eval_image_size or cache_size_for(cfg.image_size)


def prepare_data(
    cfg: TrainConfig,
    run_dir: Path,
    on_message: Callable[[str], None],
    on_decode: Callable[[int, int], None],
    write: bool = True,
) -> PreparedData:
    """Scan, decode (through the cache) and split DATA_DIR; writes config.toml and skipped.txt
    (unless `write` is False: the ranks other than 0 of a torchrun job write nothing)."""
    dataset, corrected = _scan(cfg)
    mean, std = _resolve_image_size(cfg, dataset)
    if write:
        save_config(cfg, run_dir / "config.toml")  # the resolved config, image size included
    eval_size = eval_size_for(cfg)
    decode_size = max(cache_size_for(cfg.image_size), eval_size)
    if cfg.model == "pretrained":  # no random crops: decode at the size the network sees
        decode_size = eval_size
    samples = dataset.train + dataset.val
    table = _decode(cfg, samples, decode_size, dataset.root, on_message, on_decode)
    skipped = [(str(samples[i].path), reason) for i, reason in sorted(table.errors.items())]
    if write:
        write_skipped(run_dir / "skipped.txt", skipped)
    if skipped:
        on_message(
            f"skipped {len(skipped)} unreadable files; the list is in {run_dir / 'skipped.txt'}"
        )
    n_train = len(dataset.train)
    train_idx = np.flatnonzero(table.ok[:n_train])
    val_idx = n_train + np.flatnonzero(table.ok[n_train:])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    _check_usable(labels[train_idx], "training", dataset)
    _check_usable(labels[val_idx], "validation", dataset, need_both=False)
    train_paths = [samples[i].path for i in train_idx]
    repeat = _repeats(train_paths, corrected, cfg.correction_weight, on_message)
    counts = {
        "train": dataset.counts([samples[i] for i in train_idx]),
        "val": dataset.counts([samples[i] for i in val_idx]),
    }
    return PreparedData(
        dataset,
        cfg.image_size,
        decode_size,
        eval_size,
        table.array,
        table.slots[train_idx],
        labels[train_idx],
        table.slots[val_idx],
        labels[val_idx],
        counts,
        skipped,
        train_repeat=repeat,
        mean=tuple(mean),
        std=tuple(std),
        train_paths=train_paths,
        val_paths=[samples[i].path for i in val_idx],
        tagged_slots=table.slots[_tagged(samples, np.concatenate([train_idx, val_idx]), dataset)],
    )


def _scan(cfg: TrainConfig) -> tuple[Dataset, set[str]]:
    """DATA_DIR's pictures split into train and validation, and the resolved paths of the
    lessons (corrected pictures, and tagged ones a person confirmed against the model's
    opinion), which always train: a lesson held out for validation would teach nothing."""
    if not cfg.data:
        raise CatnetError("no data folder given", hint="catnet train DATA_DIR")
    dataset = scan_dataset(cfg.data, cfg.positive, cfg.val_fraction, cfg.seed)
    if not dataset.val:
        raise CatnetError("no validation pictures: use --val-fraction > 0 or add a val/ folder")
    corrected = corrected_paths(dataset.root) | reviewed_paths(dataset.root)
    if corrected:
        moved = [s for s in dataset.val if str(s.path.resolve()) in corrected]
        dataset.val = [s for s in dataset.val if s not in moved]
        dataset.train = dataset.train + moved
    return dataset, corrected


def _tagged(samples: list[Sample], readable: np.ndarray, dataset: Dataset) -> np.ndarray:
    """(m,) indices (among readable) of the samples a person tagged: every logged correction,
    lesson or not, and every confirmation."""
    by_hand = corrected_paths(dataset.root, lessons_only=False) | reviewed_paths(dataset.root)
    if not by_hand:
        return np.zeros(0, dtype=np.int64)
    rows = [i for i in readable.tolist() if str(samples[i].path.resolve()) in by_hand]
    return np.array(rows, dtype=np.int64)


def _resolve_image_size(cfg: TrainConfig, dataset: Dataset) -> tuple[tuple, tuple]:
    """Sets cfg.image_size where it is 0 (auto): the backbone's own input size for a
    pretrained model, else chosen from the pictures. Returns the input (mean, std)."""
    mean, std = MEAN, STD
    if cfg.model == "pretrained":
        from catnet.models.pretrained import DEFAULT_BACKBONE, check_backbone_name, input_defaults

        check_backbone_name(cfg.backbone or DEFAULT_BACKBONE)
        size, mean, std = input_defaults(cfg.backbone or DEFAULT_BACKBONE)
        cfg.image_size = cfg.image_size or size
    cfg.image_size = cfg.image_size or auto_image_size(dataset.train, cfg.max_image_size, cfg.seed)
    return tuple(mean), tuple(std)


def _decode(
    cfg: TrainConfig,
    samples: list[Sample],
    decode_size: int,
    root: Path,
    on_message: Callable[[str], None],
    on_decode: Callable[[int, int], None],
) -> PixelTable:
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
    on_message(f"reading {len(samples)} pictures from {root} at {decode_size} px")
    return load_pixels(
        [s.path for s in samples],
        decode_size,
        cache_root=cache_root if cfg.cache else None,
        workers=cfg.workers,
        max_pixels=cfg.max_image_pixels,
        on_progress=on_decode,
        on_message=on_message,
    )


def _repeats(
    train_paths: list[Path], corrected: set[str], weight: int, on_message: Callable[[str], None]
) -> np.ndarray:
    """(n_train,) int64: how many times each training picture counts; lessons `weight` times."""
    repeat = np.array(
        [weight if str(path.resolve()) in corrected else 1 for path in train_paths],
        dtype=np.int64,
    )
    if corrected:
        on_message(f"{int((repeat > 1).sum())} corrected pictures weighted x{weight}")
    return repeat


def _check_usable(labels: np.ndarray, split: str, dataset: Dataset, need_both: bool = True) -> None:
    if len(labels) == 0:
        raise CatnetError(f"no readable {split} pictures under {dataset.root}")
    if need_both and len(set(labels.tolist())) < 2:
        raise CatnetError(
            f"the readable {split} pictures are all one class: need cats and not-cats"
        )
