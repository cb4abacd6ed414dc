"""The recipes: what each kind of network sets up before training.loop.run_epochs runs its
epochs, and how its run ends. They share the loop, the loss and the optimizer builder; they
differ in their epoch function (training.steps, training.head_fit).

`pixels` (cnn, mlp): the network learns from decoded pixels with augmentation, optionally
through an exponential moving average of its weights (--ema).

`features` (`--model pretrained`, the default): the frozen part of the backbone runs once per
picture and once on its mirror image (training.features); the trained part (the last
`train_stages` stages and the new head) then learns from those stored outputs. Regularisers
here: dropout before the head, AdamW weight decay, mirror images, label smoothing, early
stopping and the LR schedule. Batch norm in trained stages keeps its ImageNet statistics. Below
FULL_BATCH_PHOTOS a head alone is fitted full batch (training.head_fit) in one "epoch".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from catnet.config import TrainConfig
from catnet.errors import CatnetError
from catnet.models.checkpoint import load_checkpoint
from catnet.models.pretrained import DEFAULT_BACKBONE, PretrainedNet, load_imagenet_backbone
from catnet.runtime.compute import Compute
from catnet.runtime.distributed import leader_first, wrap_model
from catnet.training.features import Features, logits_on
from catnet.training.finalize import finalize_run
from catnet.training.head_fit import fit_head_epoch, out_of_fold_logits
from catnet.training.prepare import PreparedData
from catnet.training.results import TrainResult, evaluate_split
from catnet.training.state import Run
from catnet.training.steps import OnBatch, build_optimizer, feature_epoch, pixel_epoch

EpochFn = Callable[[Run, OnBatch], dict[str, float]]  # one epoch's metrics row (train_*, lr)
Finalize = Callable[[str], TrainResult]  # the stop reason -> the finished run's result


def pixels(run: Run, resume: dict[str, Any] | None) -> tuple[EpochFn, Finalize]:
    """The from-scratch networks (cnn, mlp); resume: last.pt's payload."""
    cfg, data, state = run.cfg, run.data, run.state
    run.model = model = _pixel_network(cfg, data, run.compute)
    run.optimizer = build_optimizer(model, cfg)
    if cfg.ema:  # the exponential moving average of the weights: what validation and best.pt see
        run.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    if resume:
        state.load(resume, model, run.optimizer, run.gen)
        if run.ema is not None:  # the average so far is what state_dict holds
            run.ema.module.load_state_dict(resume["state_dict"])
            run.ema.n_averaged.fill_(max(state.step, 1))
    run.batch_size, run.max_epochs = cfg.batch_size, cfg.epochs
    run.steps = _steps(run)
    run.forward = wrap_model(model, run.compute, run.ranks)
    val = dataclasses.replace(  # this rank's validation pictures (all of them on one process)
        data, val_slots=run.part(data.val_slots), val_labels=run.part(data.val_labels)
    )

    def val_logits() -> torch.Tensor:
        seen = run.ema.module if run.ema is not None else model
        return evaluate_split(seen, val, run.compute, cfg.batch_size * 2, cfg.tta)["logits"]

    def finalize(stop_reason: str) -> TrainResult:
        return dataclasses.replace(finalize_run(run), stop_reason=stop_reason)

    run.val_logits = val_logits
    return pixel_epoch, finalize


def _pixel_network(cfg: TrainConfig, data: PreparedData, compute: Compute) -> nn.Module:
    from catnet.models.networks import architecture_from_config, build_model, network_from

    arch = architecture_from_config(cfg, data.image_size)
    if not cfg.init_from:
        model = build_model(arch)
    else:  # fine-tuning: start from a trained network of the same architecture
        payload = load_checkpoint(cfg.init_from)
        if payload["arch"] != arch:
            raise CatnetError(f"{cfg.init_from} has another architecture than this config")
        model = network_from(payload)
    return model.to(compute.device, memory_format=torch.channels_last)


def _steps(run: Run) -> int:
    """Optimizer steps per epoch: the same on every rank under torchrun (training.sharding)."""
    if run.shard:
        return run.shard.steps(len(run.shown), run.batch_size)
    return math.ceil(len(run.shown) / run.batch_size)


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


def features(run: Run, resume: dict[str, Any] | None) -> tuple[EpochFn, Finalize]:
    """The pretrained recipe (see the module docstring); resume: last.pt's payload."""
    cfg, compute, stages = run.cfg, run.compute, run.cfg.train_stages
    run.model = net = build_network(cfg, compute)
    with leader_first(run.ranks, cfg.cache):  # rank 0 fills the feature cache; others read it
        feats = Features(net, stages, run.data, cfg, compute, run.cb)
    net.requires_grad_(False)  # the frozen part; only the trained part learns
    for module in net.trained_modules(stages):
        module.requires_grad_(True)
    run.optimizer = build_optimizer(net, cfg)
    if resume:
        run.state.load(resume, net, run.optimizer, run.gen)
    run.save_every_epoch = False  # the best weights are kept in memory (see Run)
    if resume:  # what best.pt held when last.pt was written
        run.best_weights = resume["state_dict"]
    else:
        run.keep_best()
    shown = len(run.shown)
    run.batch_size = head_batch_size(cfg, shown)
    full = stages == 0 and shown < FULL_BATCH_PHOTOS
    if full:  # one "epoch" that fits the head to convergence
        run.steps = run.min_epochs = run.max_epochs = 1
    else:
        run.steps, run.max_epochs = _steps(run), cfg.epochs
        if stages == 0:
            run.min_epochs = min(cfg.epochs, math.ceil(MIN_HEAD_STEPS / run.steps))
        run.forward = wrap_model(TrainedPart(net, stages), compute, run.ranks, sync_buffers=False)
    val, val_mirror = run.part(feats.val), run.part(feats.val_mirror) if cfg.tta else None
    run.val_logits = lambda: logits_on(net, stages, val, val_mirror, compute)

    def epoch(run: Run, on_batch: OnBatch) -> dict[str, float]:
        return (fit_head_epoch if full else feature_epoch)(run, feats, on_batch)

    def finalize(stop_reason: str) -> TrainResult:
        net.load_state_dict(run.best_weights)

        def logits(split: str) -> torch.Tensor:
            plain, mirror = (feats.val, feats.val_mirror) if split == "val" else (
                feats.train, feats.train_mirror)  # fmt: skip
            return logits_on(net, stages, plain, mirror if cfg.tta else None, compute)

        if full:
            stop_reason = f"fitted the head to convergence ({run.state.step} L-BFGS iterations)"
        oof = (lambda: out_of_fold_logits(run, feats)) if full else None
        result = finalize_run(run, logits, net, oof)
        return dataclasses.replace(result, stop_reason=stop_reason)

    return epoch, finalize


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
    # the frozen features are computed and in the trained stages; feature_epoch turns dropout on.
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


class TrainedPart(nn.Module):
    """The trained part (last stages and head) as a module of its own: what a training step
    calls, and what DistributedDataParallel wraps under torchrun."""

    def __init__(self, net: PretrainedNet, stages: int) -> None:
        super().__init__()
        self.net, self.stages = net, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.trainable_part(x, self.stages)
