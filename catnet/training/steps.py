"""One epoch of the pixel loop, step by step: draw a batch, augment it, forward, loss, backward,
optimizer step. `training.loop` runs the epochs around it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from catnet.config import TrainConfig
from catnet.data.augment import AugmentSettings, augment, cutmix, prepare_eval
from catnet.errors import CatnetError
from catnet.runtime.compute import Compute
from catnet.training.prepare import PreparedData
from catnet.training.schedule import lr_factor
from catnet.training.sharding import Shard, epoch_batches, reduce_row
from catnet.training.state import TrainState


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
    shard: Shard | None = None,
) -> dict[str, float]:
    """One pass over the training pictures in a fresh random order (with a shard: this rank's
    share, and `model` the DDP wrapper). The loss tells the network how wrong it was;
    backward() sends that error back through every layer as gradients (averaged over ranks)."""
    model.train()
    settings = AugmentSettings(cfg.crop_scale, cfg.rotation, cfg.color_jitter)
    n = len(data.train_slots)
    repeat = data.train_repeat if data.train_repeat is not None else np.ones(n, dtype=np.int64)
    shown = np.repeat(np.arange(n), repeat)  # corrected pictures appear several times
    _, parts, gen = epoch_batches(shown, cfg.batch_size, state.epoch + 1, gen, shard)
    steps = len(parts)
    loss_sum, correct, seen = 0.0, 0, 0
    for i, idx in enumerate(parts):
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
    row = {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": lr}
    if shard is not None:  # over every rank's pictures
        row.update(reduce_row(shard.ranks, loss_sum, correct, seen))
    return row


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
