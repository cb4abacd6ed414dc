"""The explicit training loop: train_one_epoch returns a metric dict; `train` ties it to data,
checkpoints, early stopping, the time budget and the end of the run (finalize)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from catnet.config import TrainConfig
from catnet.data.augment import AugmentSettings, augment, cutmix, prepare_eval
from catnet.errors import CatnetError
from catnet.runtime.compute import (
    Compute,
    batches_of,
    seed_everything,
    select_compute,
    setup_threads,
)
from catnet.training.finalize import finalize_run
from catnet.training.results import (
    TrainCallbacks,
    TrainResult,
    epoch_report,
    evaluate_split,
)
from catnet.training.runs import new_run_dir, write_metrics
from catnet.training.schedule import EarlyStopping, epochs_that_fit, lr_factor
from catnet.training.state import (
    PreparedData,
    TrainState,
    prepare_data,
    restore_state,
    save_run_checkpoints,
)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """labels: (B,) 0/1, or soft targets in [0, 1] (CutMix)."""
    targets = labels.float() * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: PreparedData,
    cfg: TrainConfig,
    state: TrainState,
    compute: Compute,
    gen: torch.Generator,
    on_batch: Callable[[int, int, float], None] | None = None,
    ema: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the training pictures in a fresh random order. The loss tells the network
    how wrong it was; backward() sends that error back through every layer as gradients."""
    model.train()
    settings = AugmentSettings(cfg.crop_scale, cfg.rotation, cfg.color_jitter)
    n = len(data.train_slots)
    repeat = data.train_repeat if data.train_repeat is not None else np.ones(n, dtype=np.int64)
    shown = np.repeat(np.arange(n), repeat)  # corrected pictures appear several times
    order = shown[torch.randperm(len(shown), generator=gen).numpy()]
    steps = math.ceil(len(order) / cfg.batch_size)
    loss_sum, correct, seen = 0.0, 0, 0
    for i, part in enumerate(batches_of(len(order), cfg.batch_size)):
        idx = order[part]
        pixels = torch.from_numpy(np.ascontiguousarray(data.pixels[data.train_slots[idx]]))
        labels = torch.from_numpy(data.train_labels[idx]).to(compute.device)
        pixels = pixels.to(compute.device)
        if cfg.augment:
            x = augment(pixels, data.image_size, settings, gen)
        else:
            x = prepare_eval(pixels, data.image_size)
        targets = labels.float()
        if cfg.cutmix and float(torch.rand(1, generator=gen)) < cfg.cutmix:
            x, targets = cutmix(x, targets, gen)
        lr = cfg.lr * lr_factor(cfg.lr_schedule, state.step / max(state.total_steps, 1), cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with compute.autocast():
            logits = model(x)
        loss = bce_loss(logits, targets, cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise CatnetError(
                f"the loss became {loss.item()} at epoch {state.epoch + 1}, step {i + 1}: training "
                f"diverged (try a smaller --lr than {cfg.lr:g})",
                exit_code=1,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        state.step += 1
        loss_sum += loss.item() * len(idx)
        correct += int(((logits.detach().float() > 0).long() == labels).sum())
        seen += len(idx)
        if on_batch:
            on_batch(i + 1, steps, loss_sum / seen)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": lr}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on weight matrices and kernels, not on biases or batch norm
    (decaying those only fights the normalisation)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def _plan(
    cfg: TrainConfig, state: TrainState, started: float, epoch_seconds: float, steps: int
) -> None:
    """With a time budget, fit the number of epochs (and so the LR schedule) to the time left."""
    planned = cfg.epochs
    if cfg.time_budget > 0 and epoch_seconds > 0:
        reserve = 2.0 + 0.5 * epoch_seconds  # final calibration, checkpoint and plot
        left = cfg.time_budget - (time.monotonic() - started) - reserve
        planned = epochs_that_fit(left, epoch_seconds, state.epoch, cfg.epochs)
    state.planned_epochs = max(planned, state.epoch)
    state.total_steps = max(state.planned_epochs * steps, state.step)


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train on cfg.data and write a run folder. Raises CatnetError for the user's mistakes and
    KeyboardInterrupt after saving last.pt."""
    started = time.monotonic()
    cb = callbacks or TrainCallbacks()
    cfg.validate()
    setup_threads()
    compute = select_compute(cfg.device, cfg.precision)
    gen = seed_everything(cfg.seed)
    resume = restore_state(cfg) if cfg.resume else None
    run_dir = Path(cfg.resume).parent if resume else new_run_dir(cfg.out)
    data = prepare_data(cfg, run_dir, cb.on_message, cb.on_decode)
    if cfg.model == "pretrained":
        from catnet.training.feature_loop import train_on_features

        return train_on_features(cfg, data, run_dir, compute, gen, started, cb, resume)
    model = _build(cfg, data, compute)
    optimizer = build_optimizer(model, cfg)
    # The exponential moving average of the weights: what validation sees and best.pt keeps.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if cfg.ema
        else None
    )
    state = TrainState(
        stopper=EarlyStopping(
            cfg.patience, cfg.min_delta, "min" if cfg.monitor == "val_loss" else "max"
        )
    )
    if resume:
        state.load(resume, model, optimizer, gen)
        if ema is not None:  # the average so far is what state_dict holds
            ema.module.load_state_dict(resume["state_dict"])
            ema.n_averaged.fill_(max(state.step, 1))
        cb.on_message(f"resuming from epoch {state.epoch} of {run_dir}")
    save_run_checkpoints(
        run_dir, cfg, data, model, optimizer, state, gen, compute, best=False, ema=ema
    )
    steps = math.ceil(len(data.train_slots) / cfg.batch_size)
    _plan(cfg, state, started, state.epoch_seconds, steps)
    stop_reason = "finished the planned epochs"
    keep_best = cfg.select_best or cfg.patience > 0  # else best.pt follows the last epoch
    while state.epoch < state.planned_epochs:
        cb.on_epoch_start(state.epoch + 1, state.planned_epochs, steps)
        clock = BatchClock(cfg, state, started, steps, cb)
        row = train_one_epoch(model, optimizer, data, cfg, state, compute, gen, clock.on_batch, ema)
        val_start = time.monotonic()
        val = evaluate_split(
            ema.module if ema else model, data, compute, cfg.batch_size * 2, cfg.tta
        )
        state.epoch += 1
        # Typical batch time, not this epoch's wall time: the first batches pay one-off costs
        # (kernel selection, bf16 warm-up) that later epochs do not.
        state.epoch_seconds = clock.median() * steps + (time.monotonic() - val_start)
        row = {"epoch": state.epoch, **row, "val_loss": val["val_loss"], "val_acc": val["val_acc"]}
        row["seconds"] = round(time.monotonic() - started, 2)
        state.history.append(row)
        improved = state.stopper.update(row[cfg.monitor], state.epoch)
        save_best = improved or not keep_best
        save_run_checkpoints(
            run_dir, cfg, data, model, optimizer, state, gen, compute, best=save_best, ema=ema
        )
        write_metrics(run_dir / "metrics.csv", state.history)
        cb.on_epoch_end(epoch_report(row, cfg, state.planned_epochs, save_best, improved))
        if state.stopper.should_stop:
            stop_reason = f"early stopping: no {cfg.monitor} improvement in {cfg.patience} epochs"
            break
        _plan(cfg, state, started, state.epoch_seconds, steps)
        if cfg.time_budget > 0 and state.epoch >= state.planned_epochs < cfg.epochs:
            stop_reason = f"time budget of {cfg.time_budget:g} s reached"
    result = finalize_run(cfg, run_dir, data, compute, state, started, cb.on_message)
    result.stop_reason = stop_reason
    return result


class BatchClock:
    """Times batches; in the first epoch of a budgeted run it re-plans the epochs from the
    typical (median) batch time at batches 4, 8, 16, ..., so warmup and decay are laid out
    for the time that is really there."""

    def __init__(
        self, cfg: TrainConfig, state: TrainState, started: float, steps: int, cb: TrainCallbacks
    ) -> None:
        self.cfg, self.state, self.started, self.steps, self.cb = cfg, state, started, steps, cb
        self.durations: list[float] = []
        self.last = time.monotonic()

    def median(self) -> float:
        return float(np.median(self.durations)) if self.durations else 0.0

    def on_batch(self, step: int, n_steps: int, loss: float) -> None:
        now = time.monotonic()
        self.durations.append(now - self.last)
        self.last = now
        self.cb.on_batch(step, n_steps, loss)
        first_epoch = self.state.epoch == 0 and self.cfg.time_budget > 0
        if first_epoch and step >= 4 and step & (step - 1) == 0:
            recent = float(np.median(self.durations[step // 2 :]))
            _plan(self.cfg, self.state, self.started, recent * self.steps * 1.2, self.steps)


def _build(cfg: TrainConfig, data: PreparedData, compute: Compute) -> nn.Module:
    from catnet.models.networks import architecture_from_config, build_model

    model = build_model(architecture_from_config(cfg, data.image_size))
    if cfg.init_from:  # fine-tuning: start from a trained network of the same architecture
        from catnet.models.checkpoint import load_checkpoint

        payload = load_checkpoint(cfg.init_from)
        if payload["arch"] != architecture_from_config(cfg, data.image_size):
            raise CatnetError(f"{cfg.init_from} has another architecture than this config")
        model.load_state_dict(payload["state_dict"])
    return model.to(compute.device, memory_format=torch.channels_last)


# Fine-tuning epochs when none are asked for. A network trained end to end: 5. A pretrained
# model that trains only its head on stored features: 20, at a few seconds an epoch. In the
# labelling benchmark (3 seeds, README "Labelling order") 5 such epochs (4 to 12 minibatch steps
# each) learnt 94 of 107 corrections, 20 learnt 92 of 94, held-out accuracy no worse.
FINETUNE_EPOCHS = 5
FINETUNE_HEAD_EPOCHS = 20


def default_finetune_epochs(payload: dict) -> int:
    head_only = payload["arch"].get("type") == "pretrained" and not payload.get(
        "train_config", {}
    ).get("train_stages", 0)
    return FINETUNE_HEAD_EPOCHS if head_only else FINETUNE_EPOCHS


def finetune(
    checkpoint: str | Path,
    data: str | Path,
    epochs: int = 0,
    out: str = "",
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Continue training a checkpoint on (corrected) data: same architecture and recipe, a
    third of the learning rate, corrected pictures weighted up. epochs 0: the default for
    this kind of model (default_finetune_epochs)."""
    from catnet.config import from_dict
    from catnet.models.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    values = dict(payload.get("train_config", {}))
    epochs = epochs or default_finetune_epochs(payload)
    values.update(data=str(data), out=out, epochs=epochs, time_budget=0.0, resume="", patience=0)
    # A third of the training learning rate; a fine-tuned checkpoint (init_from set) already
    # carries that third, and dividing again at every Teach would shrink it to nothing (3^-9
    # after nine rounds: measured, the model stopped learning).
    lr = values.get("lr", 3e-3) if values.get("init_from") else values.get("lr", 3e-3) / 3
    values.update(init_from=str(checkpoint), lr=lr, warmup=0.0)
    # The corrected pictures are in training, not validation, so validation cannot tell which
    # epoch learnt them best: keep the last epoch, after the whole (decaying) schedule.
    values.update(select_best=False)
    cfg = from_dict(TrainConfig, values, source=str(checkpoint))
    return train(cfg, callbacks)
