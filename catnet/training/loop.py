"""The explicit training loop: `train` ties the epochs (training.steps.train_one_epoch) to the
data, checkpoints, early stopping, the time budget and the end of the run (finalize), on one
process or on several under torchrun (README "Beyond one machine")."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from catnet.config import TrainConfig
from catnet.errors import CatnetError
from catnet.runtime.compute import Compute, seed_everything, select_compute, setup_threads
from catnet.runtime.distributed import (
    SINGLE,
    Ranks,
    broadcast_object,
    collective_errors,
    finish,
    from_leader,
    leader_first,
    local_world_size,
    share_weights,
    start,
    wrap_model,
)
from catnet.training.budget import BatchClock, plan_epochs
from catnet.training.finalize import finalize_run
from catnet.training.prepare import PreparedData, prepare_data
from catnet.training.results import TrainCallbacks, TrainResult, epoch_report, evaluate_split
from catnet.training.runs import new_run_dir, write_metrics
from catnet.training.schedule import EarlyStopping
from catnet.training.sharding import (
    Shard,
    earlier_epochs,
    end_of_run,
    reduce_validation,
    write_record,
)
from catnet.training.state import TrainState, restore_state, save_run_checkpoints
from catnet.training.steps import build_optimizer, train_one_epoch


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train on cfg.data and write a run folder. Raises CatnetError for the user's mistakes and
    KeyboardInterrupt after saving last.pt. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set)
    every rank calls this: they train one network with DistributedDataParallel, rank 0 writes
    the run folder and gets the callbacks, and every rank returns the same result."""
    started = time.monotonic()
    cfg.validate()
    setup_threads(share=local_world_size())  # the ranks of one machine share its cores
    compute = select_compute(cfg.device, cfg.precision)
    ranks, compute = start(compute, cfg.dist_timeout, cfg.dist_setup_timeout)
    cb = (callbacks or TrainCallbacks()) if ranks.leader else TrainCallbacks()  # rank 0 speaks
    with collective_errors(ranks):
        result = _run(cfg, ranks, compute, started, cb)
    finish(ranks)
    return result


def _run(cfg: TrainConfig, ranks: Ranks, compute: Compute, started: float,
         cb: TrainCallbacks) -> TrainResult:  # fmt: skip
    gen = seed_everything(cfg.seed)
    resume = restore_state(cfg) if cfg.resume else None
    if resume:
        run_dir = Path(cfg.resume).parent
    else:  # rank 0 names (and makes) the run folder; the others learn its name
        run_dir = broadcast_object(ranks, new_run_dir(cfg.out) if ranks.leader else None)
    with leader_first(ranks, cfg.cache):  # rank 0 decodes into the cache; the others read it
        data = prepare_data(cfg, run_dir, cb.on_message, cb.on_decode, write=ranks.leader)
    shard = None
    if ranks.active:
        done = resume["resume"]["epoch"] if resume else 0
        shard = Shard(ranks, cfg.seed, earlier_epochs(run_dir, done + 1))
        cb.on_message(f"training on {ranks.world} processes ({ranks.backend}): each step's "
                      f"batch is split among them")  # fmt: skip
    if cfg.model == "pretrained":
        from catnet.training.feature_loop import train_on_features

        return train_on_features(cfg, data, run_dir, compute, gen, started, cb, resume, shard)
    return _train_pixels(cfg, data, run_dir, compute, gen, started, cb, resume, shard)


def _train_pixels(cfg: TrainConfig, data: PreparedData, run_dir: Path, compute: Compute,
                  gen: torch.Generator, started: float, cb: TrainCallbacks, resume: dict | None,
                  shard: Shard | None) -> TrainResult:  # fmt: skip
    """The epochs of the from-scratch networks (cnn, mlp), their checkpoints and the end."""
    model = _build(cfg, data, compute)
    optimizer = build_optimizer(model, cfg)
    # The exponential moving average of the weights: what validation sees and best.pt keeps.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if cfg.ema
        else None
    )
    mode = "min" if cfg.monitor == "val_loss" else "max"
    state = TrainState(stopper=EarlyStopping(cfg.patience, cfg.min_delta, mode))
    if resume:
        state.load(resume, model, optimizer, gen)
        if ema is not None:  # the average so far is what state_dict holds
            ema.module.load_state_dict(resume["state_dict"])
            ema.n_averaged.fill_(max(state.step, 1))
        cb.on_message(f"resuming from epoch {state.epoch} of {run_dir}")
    ranks = shard.ranks if shard else SINGLE
    if ranks.leader:
        if resume:  # the history last.pt carries is the truth (see end_epoch)
            write_metrics(run_dir / "metrics.csv", state.history)
        save_run_checkpoints(
            run_dir, cfg, data, model, optimizer, state, gen, compute, best=False, ema=ema
        )
    run = _PixelRun(cfg, data, run_dir, compute, gen, started, cb, shard, model, optimizer, ema)
    stop_reason = run.epochs(state)

    def finalize() -> TrainResult:
        result = finalize_run(cfg, run_dir, data, compute, state, started, cb.on_message)
        result.stop_reason = stop_reason
        return result

    return end_of_run(shard, run_dir, model.state_dict(), cfg.batch_size, run.n_shown, finalize)


@dataclasses.dataclass
class _PixelRun:
    """What the pixel loop's epochs share (a bundle, so the loop reads as the steps it takes)."""

    cfg: TrainConfig
    data: PreparedData
    run_dir: Path
    compute: Compute
    gen: torch.Generator
    started: float
    cb: TrainCallbacks
    shard: Shard | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None

    def __post_init__(self) -> None:
        self.ranks = self.shard.ranks if self.shard else SINGLE
        repeat = self.data.train_repeat
        self.n_shown = int(repeat.sum()) if repeat is not None else len(self.data.train_slots)
        self.steps = (
            self.shard.steps(self.n_shown, self.cfg.batch_size)
            if self.shard
            else math.ceil(len(self.data.train_slots) / self.cfg.batch_size)
        )
        # This rank's validation pictures (all of them without torchrun).
        self.val_data = self.data if self.shard is None else dataclasses.replace(
            self.data, val_slots=self.shard.part(self.data.val_slots),
            val_labels=self.shard.part(self.data.val_labels),
        )  # fmt: skip

    def epochs(self, state: TrainState) -> str:
        """Train until the plan, early stopping or the budget ends it; returns why it ended."""
        cfg, cb, ranks, steps = self.cfg, self.cb, self.ranks, self.steps
        net = wrap_model(self.model, self.compute, ranks)
        plan_epochs(cfg, state, self.started, state.epoch_seconds, steps, ranks)
        stop_reason = "finished the planned epochs"
        while state.epoch < state.planned_epochs:
            cb.on_epoch_start(state.epoch + 1, state.planned_epochs, steps)
            clock = BatchClock(cfg, state, self.started, steps, cb, ranks)
            row = train_one_epoch(net, self.optimizer, self.data, cfg, state, self.compute,
                                  self.gen, clock.on_batch, self.ema, self.shard)  # fmt: skip
            # DDP sent rank 0's batch-norm statistics before each step, but each rank's last
            # forward pass updated its own: rank 0's are kept, so all ranks hold one network.
            share_weights(ranks, self.model, buffers_only=True)
            if self.ema is not None:
                share_weights(ranks, self.ema.module, buffers_only=True)
            val_start = time.monotonic()
            row.update(self.validate())
            state.epoch += 1
            # Typical batch time, not this epoch's wall time: the first batches pay one-off
            # costs (kernel selection, bf16 warm-up) that later epochs do not.
            state.epoch_seconds = clock.median() * steps + (time.monotonic() - val_start)
            if self.end_epoch(state, row):
                return f"early stopping: no {cfg.monitor} improvement in {cfg.patience} epochs"
            plan_epochs(cfg, state, self.started, state.epoch_seconds, steps, ranks)
            if cfg.time_budget > 0 and state.epoch >= state.planned_epochs < cfg.epochs:
                stop_reason = f"time budget of {cfg.time_budget:g} s reached"
        return stop_reason

    def validate(self) -> dict[str, float]:
        """val_loss and val_acc, over every rank's share under torchrun."""
        model = self.ema.module if self.ema else self.model
        val = evaluate_split(model, self.val_data, self.compute, self.cfg.batch_size * 2,
                             self.cfg.tta)  # fmt: skip
        if self.ranks.active:
            labels = torch.from_numpy(self.val_data.val_labels)
            val.update(reduce_validation(self.ranks, val["logits"], labels))
        return {"val_loss": val["val_loss"], "val_acc": val["val_acc"]}

    def end_epoch(self, state: TrainState, row: dict[str, float]) -> bool:
        """Record the epoch (rank 0 writes); True if early stopping ends the run here."""
        cfg = self.cfg
        row = {"epoch": state.epoch, **row, "seconds": round(time.monotonic() - self.started, 2)}
        state.history.append(row)
        improved = state.stopper.update(row[cfg.monitor], state.epoch)
        best = improved or not (cfg.select_best or cfg.patience > 0)  # else follows the last
        if self.ranks.leader:
            # metrics.csv first, the checkpoint last: last.pt is what a resume starts from, and
            # it rewrites metrics.csv from the history it carries. A stop between the two then
            # leaves a row that the resume writes again, never an epoch missing from the file.
            write_metrics(self.run_dir / "metrics.csv", state.history)
            save_run_checkpoints(self.run_dir, cfg, self.data, self.model, self.optimizer, state,
                                 self.gen, self.compute, best=best, ema=self.ema)  # fmt: skip
            if self.shard:
                write_record(self.run_dir, self.shard, cfg.batch_size, self.n_shown)
        self.cb.on_epoch_end(epoch_report(row, cfg, state.planned_epochs, best, improved))
        # Rank 0 decides, so that every rank leaves the loop at the same epoch.
        return bool(from_leader(self.ranks, [int(state.stopper.should_stop)])[0])


def _build(cfg: TrainConfig, data: PreparedData, compute: Compute) -> nn.Module:
    from catnet.models.checkpoint import load_checkpoint
    from catnet.models.networks import architecture_from_config, build_model, network_from

    arch = architecture_from_config(cfg, data.image_size)
    if not cfg.init_from:
        return build_model(arch).to(compute.device, memory_format=torch.channels_last)
    # fine-tuning: start from a trained network of the same architecture
    payload = load_checkpoint(cfg.init_from)
    if payload["arch"] != arch:
        raise CatnetError(f"{cfg.init_from} has another architecture than this config")
    return network_from(payload).to(compute.device, memory_format=torch.channels_last)


# Fine-tuning epochs when none are asked for. A network trained end to end: 5. A pretrained
# model that trains only its head on stored features: 20, at a few seconds an epoch. In the
# labelling benchmark (3 seeds, README "Labelling order") 5 such epochs (4 to 12 minibatch steps
# each) learnt 88 % of the corrections, 20 learnt 97-98 %, held-out accuracy no worse.
FINETUNE_EPOCHS = 5
FINETUNE_HEAD_EPOCHS = 20


def default_finetune_epochs(payload: dict) -> int:
    from catnet.models.pretrained import trains_head_only

    return FINETUNE_HEAD_EPOCHS if trains_head_only(payload) else FINETUNE_EPOCHS


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
