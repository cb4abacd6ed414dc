"""What a training run carries between epochs and across restarts: the prepared pixels, the
loop's counters, and the checkpoints that hold them."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from catnet.config import TrainConfig, from_dict, save_config
from catnet.curation.corrections import corrected_paths
from catnet.curation.reviewed import reviewed_paths
from catnet.data.augment import MEAN, STD
from catnet.data.cache import cache_size_for, default_cache_root, load_pixels
from catnet.data.folders import Dataset, Sample, scan_dataset
from catnet.data.pixels import open_picture
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from catnet.runtime.compute import Compute
from catnet.training.runs import write_skipped
from catnet.training.schedule import EarlyStopping


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
    if not cfg.data:
        raise CatnetError("no data folder given", hint="catnet train DATA_DIR")
    dataset = scan_dataset(cfg.data, cfg.positive, cfg.val_fraction, cfg.seed)
    if not dataset.val:
        raise CatnetError("no validation pictures: use --val-fraction > 0 or add a val/ folder")
    # Corrected pictures, and tagged ones a person confirmed against the model's opinion.
    corrected = corrected_paths(dataset.root) | reviewed_paths(dataset.root)
    if corrected:  # a correction is a lesson: it must be in the training pictures
        moved = [s for s in dataset.val if str(s.path.resolve()) in corrected]
        dataset.val = [s for s in dataset.val if s not in moved]
        dataset.train = dataset.train + moved
    mean, std = MEAN, STD
    if cfg.model == "pretrained":
        from catnet.models.pretrained import DEFAULT_BACKBONE, check_backbone_name, input_defaults

        check_backbone_name(cfg.backbone or DEFAULT_BACKBONE)
        size, mean, std = input_defaults(cfg.backbone or DEFAULT_BACKBONE)
        cfg.image_size = cfg.image_size or size
    cfg.image_size = cfg.image_size or auto_image_size(dataset.train, cfg.max_image_size, cfg.seed)
    if write:
        save_config(cfg, run_dir / "config.toml")  # the resolved config, image size included
    eval_size = eval_size_for(cfg)
    decode_size = max(cache_size_for(cfg.image_size), eval_size)
    if cfg.model == "pretrained":  # no random crops: decode at the size the network sees
        decode_size = eval_size
    samples = dataset.train + dataset.val
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
    on_message(f"reading {len(samples)} pictures from {dataset.root} at {decode_size} px")
    table = load_pixels(
        [s.path for s in samples],
        decode_size,
        cache_root=cache_root if cfg.cache else None,
        workers=cfg.workers,
        max_pixels=cfg.max_image_pixels,
        on_progress=on_decode,
        on_message=on_message,
    )
    skipped = [(str(samples[i].path), reason) for i, reason in sorted(table.errors.items())]
    if write:
        write_skipped(run_dir / "skipped.txt", skipped)
    if skipped:
        on_message(
            f"skipped {len(skipped)} unreadable files; the list is in {run_dir / 'skipped.txt'}"
        )
    n_train = len(dataset.train)
    ok = table.ok
    train_idx = np.flatnonzero(ok[:n_train])
    val_idx = n_train + np.flatnonzero(ok[n_train:])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    _check_usable(labels[train_idx], "training", dataset)
    _check_usable(labels[val_idx], "validation", dataset, need_both=False)
    repeat = np.array(
        [
            cfg.correction_weight if str(samples[i].path.resolve()) in corrected else 1
            for i in train_idx
        ],
        dtype=np.int64,
    )
    if corrected:
        on_message(
            f"{int((repeat > 1).sum())} corrected pictures weighted x{cfg.correction_weight}"
        )
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
        train_paths=[samples[i].path for i in train_idx],
        val_paths=[samples[i].path for i in val_idx],
    )


def _check_usable(labels: np.ndarray, split: str, dataset: Dataset, need_both: bool = True) -> None:
    if len(labels) == 0:
        raise CatnetError(f"no readable {split} pictures under {dataset.root}")
    if need_both and len(set(labels.tolist())) < 2:
        raise CatnetError(
            f"the readable {split} pictures are all one class: need cats and not-cats"
        )


@dataclass
class TrainState:
    stopper: EarlyStopping
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    total_steps: int = 1  # steps the LR schedule is planned over
    planned_epochs: int = 0
    epoch_seconds: float = 0.0  # wall time of the last epoch, for budget planning
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "total_steps": self.total_steps,
            "planned_epochs": self.planned_epochs,
            "epoch_seconds": self.epoch_seconds,
            "history": self.history,
            "stopper": self.stopper.state(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load(
        self,
        payload: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        gen: torch.Generator,
    ) -> None:
        resume = payload["resume"]
        model.load_state_dict(payload["train_weights"])
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        for key in ("epoch", "step", "total_steps", "planned_epochs", "epoch_seconds", "history"):
            setattr(self, key, resume[key])
        self.stopper = EarlyStopping(**resume["stopper"])


def restore_state(cfg: TrainConfig) -> dict[str, Any]:
    payload = load_checkpoint(cfg.resume)
    if "resume" not in payload:
        raise CatnetError(f"{cfg.resume} has no training state to resume (use the run's last.pt)")
    return payload


def resume_config(path: str, overrides: dict[str, Any]) -> TrainConfig:
    """The config a run was started with, plus any options given again (e.g. more --epochs)."""
    payload = load_checkpoint(path)
    if "resume" not in payload:
        raise CatnetError(f"{path} has no training state to resume (use the run's last.pt)")
    values = {**payload["train_config"], **{k: v for k, v in overrides.items() if v is not None}}
    values["resume"] = str(path)
    cfg = from_dict(TrainConfig, values, source=str(path))
    cfg.validate()
    return cfg


def save_run_checkpoints(
    run_dir: Path,
    cfg: TrainConfig,
    data: PreparedData,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    gen: torch.Generator,
    compute: Compute,
    best: bool,
    ema: nn.Module | None = None,
) -> None:
    """last.pt every epoch (with the state to resume); best.pt when validation improved.
    With an EMA of the weights, the average is the model (state_dict) and the raw weights are
    kept in last.pt's train_weights to resume from."""
    from catnet.models.networks import architecture_from_config

    fields = {
        "arch": architecture_from_config(cfg, data.image_size),
        "classes": {
            "positive": data.dataset.positive,
            "names": data.dataset.classes,
            "labels": ["not_cat", "cat"],  # index = model output above/below threshold
        },
        "preprocessing": {
            "decode_size": data.decode_size,
            "image_size": data.eval_size,  # what inference feeds the network
            "train_image_size": data.image_size,  # the random crops it learnt from
            "mean": list(data.mean),
            "std": list(data.std),
            "resize": "short side to decode_size, centre square, bilinear to image_size",
        },
        "threshold": 0.5,
        "tta": cfg.tta,
        "temperature": 1.0,
        "train_config": dataclasses.asdict(cfg),
        "data_summary": {
            "root": str(data.dataset.root),
            "counts": data.counts,
            "skipped": len(data.skipped),
        },
        "metrics": dict(state.history[-1]) if state.history else {},
        "epoch": state.epoch,
        "compute": compute.name,
    }
    weights = ema.module.state_dict() if ema is not None else model.state_dict()
    last = make_checkpoint(weights, **fields, resume=state.to_dict(optimizer, gen))
    last["train_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_checkpoint(last, run_dir / "last.pt")
    if best:
        save_checkpoint(make_checkpoint(weights, **fields), run_dir / "best.pt")
