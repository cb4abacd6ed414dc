"""What a training run carries between epochs and across restarts: the loop's counters, and
the checkpoints that hold them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catnet.config import TrainConfig, from_dict
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from catnet.runtime.compute import Compute
from catnet.training.prepare import PreparedData
from catnet.training.schedule import EarlyStopping


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
