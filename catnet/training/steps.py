"""The epochs of every recipe, step by step: draw a batch, forward, loss, backward, optimizer
step. The recipes differ only in their batches: pixels with augmentation (`pixel_epoch`), or
stored backbone features, plain or mirrored (`feature_epoch`); the third recipe, the full-batch
head fit, is training.head_fit.fit_head_epoch. `training.loop.run_epochs` runs the epochs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catnet.config import TrainConfig
from catnet.data.augment import AugmentSettings, augment, cutmix, prepare_eval
from catnet.errors import CatnetError
from catnet.runtime.distributed import share_weights
from catnet.training.schedule import lr_factor
from catnet.training.sharding import epoch_batches, reduce_row
from catnet.training.state import Run

if TYPE_CHECKING:
    from catnet.training.features import Features

OnBatch = Callable[[int, int, float], None]  # (step, steps, mean loss so far)
# (indices into the training pictures, the epoch's generator) -> (inputs on the device,
# targets (B,) float in [0, 1] on the device: 0/1, or soft after CutMix)
Inputs = Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed binary cross-entropy, the one loss every recipe trains with. labels:
    (B,) 0/1, or soft targets in [0, 1] (CutMix); smoothing pulls them towards 1/2."""
    targets = labels.float() * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that train (requires_grad); weight decay only on weight
    matrices and kernels, not on biases or batch norm (decaying those only fights the
    normalisation)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def minibatch_epoch(run: Run, inputs: Inputs, on_batch: OnBatch) -> dict[str, float]:
    """One pass over the training pictures in a fresh random order (under torchrun this rank's
    share, and run.forward the DDP wrapper: backward averages the gradients over the ranks).
    The loss tells the network how wrong it was; backward() sends that error back through
    every trained layer as gradients. Returns train_loss, train_acc (over every rank) and lr."""
    cfg, state, compute, optimizer = run.cfg, run.state, run.compute, run.optimizer
    _, parts, gen = epoch_batches(run.shown, run.batch_size, state.epoch + 1, run.gen, run.shard)
    loss_sum, correct, seen, lr = 0.0, 0, 0, cfg.lr
    for i, idx in enumerate(parts):
        x, targets = inputs(idx, gen)
        labels = torch.from_numpy(run.data.train_labels[idx]).to(compute.device)
        lr = cfg.lr * lr_factor(cfg.lr_schedule, state.step / max(state.total_steps, 1), cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with compute.autocast():
            logits = run.forward(x)
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
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        state.step += 1
        loss_sum += loss.item() * len(idx)
        correct += int(((logits.detach().float() > 0).long() == labels).sum())
        seen += len(idx)
        on_batch(i + 1, len(parts), loss_sum / seen)
    row = {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": lr}
    if run.shard is not None:  # over every rank's pictures
        row.update(reduce_row(run.shard.ranks, loss_sum, correct, seen))
    return row


def pixel_epoch(run: Run, on_batch: OnBatch) -> dict[str, float]:
    """The from-scratch networks' epoch: decoded pixels, augmented, some mixed by CutMix."""
    cfg, data, device = run.cfg, run.data, run.compute.device
    settings = AugmentSettings(cfg.crop_scale, cfg.rotation, cfg.color_jitter)

    def inputs(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.ascontiguousarray(data.pixels[data.train_slots[idx]]))
        pixels = pixels.to(device)  # (B, S, S, 3) uint8
        x = (augment(pixels, data.image_size, settings, gen) if cfg.augment
             else prepare_eval(pixels, data.image_size))  # fmt: skip
        targets = torch.from_numpy(data.train_labels[idx]).to(device).float()
        if cfg.cutmix and float(torch.rand(1, generator=gen)) < cfg.cutmix:
            x, targets = cutmix(x, targets, gen)
        return x, targets

    run.forward.train()
    row = minibatch_epoch(run, inputs, on_batch)
    # DDP sent rank 0's batch-norm statistics before each step, but each rank's last forward
    # pass updated its own: rank 0's are kept, so all ranks hold one network.
    share_weights(run.ranks, run.model, buffers_only=True)
    if run.ema is not None:
        share_weights(run.ranks, run.ema.module, buffers_only=True)
    return row


def feature_epoch(run: Run, feats: Features, on_batch: OnBatch) -> dict[str, float]:
    """The pretrained recipe's epoch: the trained part (run.forward) learns from the stored
    frozen-part outputs; each picture is shown plain or mirrored at random (with `augment`:
    the one augmentation that survives caching)."""
    cfg, labels, device = run.cfg, run.data.train_labels, run.compute.device

    def inputs(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(idx)
        x = feats.train[rows]  # (B, ...) fp32 on the CPU
        if cfg.augment:
            flip = torch.rand(len(rows), generator=gen) < 0.5
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), feats.train_mirror[rows], x)
        return x.to(device), torch.from_numpy(labels[idx]).to(device).float()

    run.model.eval()  # frozen batch-norm statistics in the trained stages ...
    run.model.dropout.train()  # ... but dropout on
    return minibatch_epoch(run, inputs, on_batch)
