"""Training a pretrained network on cached features: the `--model pretrained` recipe.

The frozen part of the backbone runs once per picture and once on its mirror image
(catnet.training.features); the trained part (the last `train_stages` stages and the new head)
then learns from those stored outputs. Regularisers here: dropout before the head, AdamW weight
decay, mirror images (the only augmentation that survives caching), label smoothing, early
stopping and the LR schedule. Batch norm in trained stages keeps its ImageNet statistics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catnet.config import TrainConfig
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint
from catnet.models.pretrained import DEFAULT_BACKBONE, PretrainedNet, load_imagenet_backbone
from catnet.runtime.compute import Compute
from catnet.runtime.distributed import (
    SINGLE,
    Ranks,
    from_leader,
    leader_first,
    share_weights,
    wrap_model,
)
from catnet.training.features import Features, logits_on
from catnet.training.finalize import finalize_run
from catnet.training.head_fit import fit_head_epoch
from catnet.training.prepare import PreparedData
from catnet.training.results import TrainCallbacks, TrainResult, epoch_report
from catnet.training.runs import write_metrics
from catnet.training.schedule import EarlyStopping, epochs_that_fit, lr_factor
from catnet.training.sharding import (
    Shard,
    end_of_run,
    epoch_batches,
    reduce_row,
    reduce_validation,
    write_record,
)
from catnet.training.state import TrainState, save_run_checkpoints


def build_network(cfg: TrainConfig, compute: Compute) -> PretrainedNet:
    """The backbone with ImageNet (or --weights, or --init-from) weights and a new head."""
    name = cfg.backbone or DEFAULT_BACKBONE
    net = PretrainedNet(name, cfg.dropout)
    if cfg.init_from:  # catnet finetune: continue from a trained catnet checkpoint
        payload = load_checkpoint(cfg.init_from)
        if payload["arch"].get("backbone") != name:
            raise CatnetError(f"{cfg.init_from} has another architecture than this config")
        net.load_state_dict(payload["state_dict"])
    else:
        load_imagenet_backbone(net, name, cfg.weights)
    # Eval mode for good: batch norm must use (and keep) its ImageNet statistics, both when
    # the frozen features are computed and in the trained stages; one_epoch turns dropout on.
    net.eval()
    if cfg.train_stages > net.n_stages():
        raise CatnetError(f"{name} has {net.n_stages()} stages; --train-stages "
                          f"{cfg.train_stages} is too many")  # fmt: skip
    return net.to(compute.device)


def head_batch_size(cfg: TrainConfig, n_shown: int) -> int:
    """--batch-size, but at least 4 steps per epoch: with 40 photos one batch of 32 would give
    the head one step per epoch. Batches of 8 for 32 training photos scored 98.3 against 98.0 %
    (3 dev splits, measured on stored features); 1,280 photos keep batches of 64."""
    return max(1, min(cfg.batch_size, max(4, n_shown // 4)))


def one_epoch(net: PretrainedNet, stages: int, optimizer: torch.optim.Optimizer,
              feats: Features, data: PreparedData, cfg: TrainConfig, state: TrainState,
              compute: Compute, gen: torch.Generator, shard: Shard | None = None,
              forward: nn.Module | None = None) -> dict[str, float]:  # fmt: skip
    """One pass over the stored training features in a fresh random order; each picture is
    shown plain or mirrored at random (with `augment`). Under torchrun this rank's share, and
    `forward` the DistributedDataParallel wrapper of the trained part (it averages gradients)."""
    net.eval()  # frozen batch-norm statistics in the trained stages ...
    net.dropout.train()  # ... but dropout on
    n = len(feats.train)
    repeat = data.train_repeat if data.train_repeat is not None else np.ones(n, dtype=np.int64)
    shown = np.repeat(np.arange(n), repeat)
    batch = head_batch_size(cfg, len(shown))
    order, parts, gen = epoch_batches(shown, batch, state.epoch + 1, gen, shard)
    step = forward if forward is not None else TrainedPart(net, stages)
    labels_all = torch.from_numpy(data.train_labels)
    loss_sum, correct, lr = 0.0, 0, cfg.lr
    for part in parts:
        idx = torch.from_numpy(part)
        x = feats.train[idx]
        if cfg.augment:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), feats.train_mirror[idx], x)
        lr = cfg.lr * lr_factor(cfg.lr_schedule, state.step / max(state.total_steps, 1), cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        labels = labels_all[idx].to(compute.device)
        with compute.autocast():
            logits = step(x.to(compute.device))
        targets = labels.float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        if not torch.isfinite(loss):
            raise CatnetError(f"the loss became {loss.item()}: training diverged (try a smaller "
                              f"--lr than {cfg.lr:g})", exit_code=1)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        loss_sum += loss.item() * len(idx)
        correct += int(((logits.detach() > 0).long() == labels).sum())
    seen = max(len(order), 1)
    row = {"train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": lr}
    if shard is not None:  # over every rank's pictures
        row.update(reduce_row(shard.ranks, loss_sum, correct, len(order)))
    return row


class TrainedPart(nn.Module):
    """The trained part (last stages and head) as a module of its own: what a training step
    calls, and what DistributedDataParallel wraps under torchrun."""

    def __init__(self, net: PretrainedNet, stages: int) -> None:
        super().__init__()
        self.net, self.stages = net, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.trainable_part(x, self.stages)


def optimizer_for(net: PretrainedNet, stages: int, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trained part only; decay on weight matrices and kernels, not on biases
    or batch norm. Everything else is frozen (requires_grad False)."""
    net.requires_grad_(False)
    trained = [p for m in net.trained_modules(stages) for p in m.parameters()]
    for p in trained:
        p.requires_grad_(True)
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


class _Best:
    """The best epoch's weights so far, shaped like an EMA holder (`.module`) so that
    save_run_checkpoints writes them as the model and keeps the current ones to resume from."""

    def __init__(self, net: PretrainedNet) -> None:
        self.module = copy.deepcopy(net)

    def keep(self, net: PretrainedNet) -> None:
        self.module.load_state_dict(net.state_dict())


# A head on stored features needs a few hundred steps to settle (50 epochs of 1,280 pictures
# scored the same as 200 on the dev splits) and they take seconds, so a time budget that the
# frozen features have used up (a busy machine) still gets them: a budget can only shorten
# the cheap part, never turn it into an untrained head.
MIN_HEAD_STEPS = 1000


# Below this many training photos shown per epoch, a head alone is fitted full batch to
# convergence (head_fit) instead of by minibatch AdamW. On 3 dev splits: with 32 training photos
# +1.0 points (97.9 against 96.9 %), with 160 (downscaled) -0.1 (96.1 against 96.2 %, within
# the spread), so the switch sits between them; README "From scratch or pretrained".
FULL_BATCH_PHOTOS = 100


def full_batch(cfg: TrainConfig, shown: int) -> bool:
    """Whether this run fits its head by full-batch L-BFGS (one "epoch") instead of epochs."""
    return cfg.train_stages == 0 and shown < FULL_BATCH_PHOTOS


def _plan(cfg: TrainConfig, state: TrainState, started: float, steps: int,
          ranks: Ranks = SINGLE) -> None:  # fmt: skip
    """Fit the epochs (and so the LR schedule) to the time budget that is left; under torchrun
    rank 0's plan (training.budget says why)."""
    if steps == 0:  # full batch: one "epoch" that fits the head to convergence
        state.planned_epochs = state.total_steps = 1
        return
    planned = cfg.epochs
    if cfg.time_budget > 0 and state.epoch_seconds > 0:
        left = cfg.time_budget - (time.monotonic() - started) - 4.0  # finalize + checkpoints
        planned = epochs_that_fit(left, state.epoch_seconds, state.epoch, cfg.epochs)
    if cfg.train_stages == 0:
        planned = max(planned, min(cfg.epochs, math.ceil(MIN_HEAD_STEPS / max(steps, 1))))
    planned = max(planned, state.epoch, 1)
    total = max(planned * steps, state.step)
    state.planned_epochs, state.total_steps = from_leader(ranks, [planned, total])


def train_on_features(cfg: TrainConfig, data: PreparedData, run_dir: Path, compute: Compute,
                      gen: torch.Generator, started: float, cb: TrainCallbacks,
                      resume: dict | None, shard: Shard | None = None) -> TrainResult:  # fmt: skip
    """The pretrained recipe's epochs, checkpoints and end of run (see the module docstring)."""
    ranks = shard.ranks if shard else SINGLE
    net = build_network(cfg, compute)
    stages = cfg.train_stages
    with leader_first(ranks, cfg.cache):  # rank 0 fills the feature cache; the others read it
        feats = Features(net, stages, data, cfg, compute, cb)
    optimizer = optimizer_for(net, stages, cfg)
    mode = "min" if cfg.monitor == "val_loss" else "max"
    state = TrainState(stopper=EarlyStopping(cfg.patience, cfg.min_delta, mode))
    if resume:
        state.load(resume, net, optimizer, gen)
        cb.on_message(f"resuming from epoch {state.epoch} of {run_dir}")
    best = _Best(net)
    if resume:
        best.module.load_state_dict(resume["state_dict"])
    shown = int(data.train_repeat.sum()) if data.train_repeat is not None else len(feats.train)
    batch = head_batch_size(cfg, shown)
    steps = 0 if full_batch(cfg, shown) else math.ceil(shown / batch)
    if shard and steps:
        steps = shard.steps(shown, batch)
    try:
        stop_reason = _epochs(cfg, net, optimizer, feats, data, state, best, compute, gen, started,
                              cb, steps, shard)  # fmt: skip
    finally:  # also on Ctrl-C: the epochs so far are kept (last.pt resumes them)
        if ranks.leader:  # metrics first, the checkpoint last (see loop.py's end_epoch)
            write_metrics(run_dir / "metrics.csv", state.history)
            save_run_checkpoints(
                run_dir, cfg, data, net, optimizer, state, gen, compute, best=True, ema=best
            )
            if shard:
                write_record(run_dir, shard, batch, shown)
    val_mirror = feats.val_mirror if cfg.tta else None

    def finalize() -> TrainResult:
        net.load_state_dict(best.module.state_dict())
        logits: Callable[[str], torch.Tensor] = lambda split: logits_on(  # noqa: E731
            net, stages, *((feats.val, val_mirror) if split == "val" else
                           (feats.train, feats.train_mirror if cfg.tta else None)), compute,
        )  # fmt: skip
        result = finalize_run(cfg, run_dir, data, compute, state, started, cb.on_message,
                              logits, net)  # fmt: skip
        result.stop_reason = stop_reason
        return result

    return end_of_run(shard, run_dir, net.state_dict(), batch, shown, finalize)


def _epochs(cfg: TrainConfig, net: PretrainedNet, optimizer: torch.optim.Optimizer,
            feats: Features, data: PreparedData, state: TrainState, best: _Best,
            compute: Compute, gen: torch.Generator, started: float, cb: TrainCallbacks,
            steps: int, shard: Shard | None) -> str:  # fmt: skip
    """The epochs until the plan, early stopping or the budget ends them; returns why."""
    ranks = shard.ranks if shard else SINGLE
    forward = wrap_model(TrainedPart(net, cfg.train_stages), compute, ranks,
                         sync_buffers=False) if steps else None  # fmt: skip
    part = shard.part if shard else (lambda a: a)  # this rank's validation pictures
    val_mirror = part(feats.val_mirror) if cfg.tta else None
    val, labels = part(feats.val), torch.from_numpy(part(data.val_labels))
    keep_best = cfg.select_best or cfg.patience > 0
    _plan(cfg, state, started, steps, ranks)
    stop_reason = "finished the planned epochs"
    while state.epoch < state.planned_epochs:
        cb.on_epoch_start(state.epoch + 1, state.planned_epochs, max(steps, 1))
        tick = time.monotonic()
        if steps:
            row = one_epoch(net, cfg.train_stages, optimizer, feats, data, cfg, state, compute,
                            gen, shard, forward)  # fmt: skip
        else:  # every rank fits the same head; rank 0's is kept, bit for bit
            row = fit_head_epoch(net, feats, data, cfg, state)
            share_weights(ranks, net.head)
        logits = logits_on(net, cfg.train_stages, val, val_mirror, compute)
        state.epoch += 1
        state.epoch_seconds = time.monotonic() - tick
        row = {"epoch": state.epoch, **row, **reduce_validation(ranks, logits, labels),
               "seconds": round(time.monotonic() - started, 2)}  # fmt: skip
        state.history.append(row)
        improved = state.stopper.update(row[cfg.monitor], state.epoch)
        if improved or not keep_best:
            best.keep(net)
        cb.on_epoch_end(
            epoch_report(row, cfg, state.planned_epochs, improved or not keep_best, improved)
        )
        if from_leader(ranks, [int(state.stopper.should_stop)])[0]:
            return f"early stopping: no {cfg.monitor} improvement in {cfg.patience} epochs"
        _plan(cfg, state, started, steps, ranks)
        if steps == 0:
            stop_reason = f"fitted the head to convergence ({state.step} L-BFGS iterations)"
        elif cfg.time_budget > 0 and state.epoch >= state.planned_epochs < cfg.epochs:
            stop_reason = f"time budget of {cfg.time_budget:g} s reached"
    return stop_reason
