"""What a training run carries: what its epochs share (`Run`), the loop's counters between
epochs and across restarts (`TrainState`), and the checkpoints that hold them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from catnet.config import TrainConfig, from_dict
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from catnet.runtime.compute import Compute
from catnet.runtime.distributed import SINGLE, Ranks
from catnet.training.prepare import PreparedData
from catnet.training.results import TrainCallbacks
from catnet.training.schedule import EarlyStopping
from catnet.training.sharding import Shard

COUNTERS = ("epoch", "step", "total_steps", "planned_epochs", "epoch_seconds", "history")


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
            **{key: getattr(self, key) for key in COUNTERS},
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
        for key in COUNTERS:
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


@dataclass
class Run:
    """What the epochs of one training run share, whatever the recipe: what train() set up
    (config, data, run folder, device, seed generator, callbacks, torchrun share) and what the
    recipe (training.recipes) adds. training.loop.run_epochs reads it top to bottom."""

    cfg: TrainConfig
    data: PreparedData
    run_dir: Path
    compute: Compute
    gen: torch.Generator  # the one seeded generator: shuffling and augmentation
    started: float  # time.monotonic() when train() began: the time budget counts from it
    cb: TrainCallbacks
    shard: Shard | None  # this rank's share under torchrun; None on one process
    state: TrainState
    # Set by the recipe:
    model: nn.Module = field(init=False)  # the whole network: what the checkpoints hold
    optimizer: torch.optim.Optimizer = field(init=False)
    forward: nn.Module = field(init=False)  # what a step calls (model or its trained part; DDP)
    val_logits: Callable[[], torch.Tensor] = field(init=False)  # (n_val of this rank,) logits
    batch_size: int = 0  # pictures per step, over all ranks
    steps: int = 0  # optimizer steps per epoch (1: the full-batch head fit)
    min_epochs: int = 1  # the time budget cannot plan fewer
    max_epochs: int = 0  # cfg.epochs, or 1 for the full-batch head fit
    ema: AveragedModel | None = None  # pixels: the average of the weights validation sees
    # False for the feature recipe, whose epochs take milliseconds: writing the whole backbone
    # every epoch would cost more than training, so the weights best.pt should hold are kept
    # in memory (best_weights) and both checkpoints are written when the run ends.
    save_every_epoch: bool = True
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ranks(self) -> Ranks:
        return self.shard.ranks if self.shard else SINGLE

    @property
    def shown(self) -> np.ndarray:
        """(n_shown,) training indices of one epoch: corrected pictures appear several times."""
        repeat = self.data.train_repeat
        n = len(self.data.train_labels)
        return np.repeat(np.arange(n), repeat if repeat is not None else 1)

    def keep_best(self) -> None:
        """Copy the current weights into best_weights (the run goes on changing the model's)."""
        self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def part(self, array: np.ndarray) -> np.ndarray:
        """This rank's share of a fixed list (validation); all of it on one process."""
        return self.shard.part(array) if self.shard else array


def save_run_checkpoints(run: Run, best: bool, weights: dict[str, torch.Tensor] | None = None
                         ) -> None:  # fmt: skip
    """last.pt (with the state to resume) and, with `best`, best.pt. They hold `weights` (the
    best epoch's), else the EMA of the weights, else the current ones; last.pt keeps the
    current ones in train_weights to resume from."""
    from catnet.models.networks import architecture_from_config

    cfg, data, state, model = run.cfg, run.data, run.state, run.model
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
        "compute": run.compute.name,
    }
    if weights is None:
        weights = run.ema.module.state_dict() if run.ema is not None else model.state_dict()
    last = make_checkpoint(weights, **fields, resume=state.to_dict(run.optimizer, run.gen))
    last["train_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_checkpoint(last, run.run_dir / "last.pt")
    if best:
        save_checkpoint(make_checkpoint(weights, **fields), run.run_dir / "best.pt")
