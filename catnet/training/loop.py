"""The training loop: `train` sets a run up (data, recipe, resume, torchrun), `run_epochs`
trains it epoch by epoch, then the run is finalized. One loop for every recipe: they differ
only in their epoch function (training.recipes)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from catnet.config import TrainConfig
from catnet.runtime.compute import Compute, seed_everything, select_compute, setup_threads
from catnet.runtime.distributed import (
    Ranks,
    broadcast_object,
    collective_errors,
    finish,
    from_leader,
    leader_first,
    local_world_size,
    start,
)
from catnet.training import recipes
from catnet.training.budget import BatchClock, plan_epochs
from catnet.training.prepare import prepare_data
from catnet.training.results import TrainCallbacks, TrainResult, epoch_report
from catnet.training.runs import new_run_dir, write_metrics
from catnet.training.schedule import EarlyStopping
from catnet.training.sharding import (
    Shard,
    earlier_epochs,
    end_of_run,
    reduce_validation,
    write_record,
)
from catnet.training.state import Run, TrainState, restore_state, save_run_checkpoints


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
    mode = "min" if cfg.monitor == "val_loss" else "max"
    state = TrainState(stopper=EarlyStopping(cfg.patience, cfg.min_delta, mode))
    run = Run(cfg, data, run_dir, compute, gen, started, cb, shard, state)
    recipe = recipes.features if cfg.model == "pretrained" else recipes.pixels
    epoch, finalize = recipe(run, resume)
    if resume:
        cb.on_message(f"resuming from epoch {state.epoch} of {run_dir}")
    stop_reason = run_epochs(run, epoch)
    return end_of_run(shard, run_dir, run.model.state_dict(), run.batch_size, len(run.shown),
                      lambda: finalize(stop_reason))  # fmt: skip


def run_epochs(run: Run, epoch: recipes.EpochFn) -> str:
    """Train until the plan, early stopping or the time budget ends it; returns why it ended.
    Under torchrun every rank runs this, and rank 0 decides whatever must be the same on all
    (the plan, the stop)."""
    cfg, state, cb, ranks = run.cfg, run.state, run.cb, run.ranks
    if ranks.leader and run.save_every_epoch:  # a last.pt to resume from, even in epoch 1
        _save(run, best=False)
    try:
        plan_epochs(run)
        stop_reason = "finished the planned epochs"
        while state.epoch < state.planned_epochs:
            cb.on_epoch_start(state.epoch + 1, state.planned_epochs, run.steps)
            clock = BatchClock(run)
            row = epoch(run, clock.on_batch)
            val_start = time.monotonic()
            labels = torch.from_numpy(run.part(run.data.val_labels))
            row.update(reduce_validation(ranks, run.val_logits(), labels))
            state.epoch += 1
            # Typical batch time, not this epoch's wall time: the first batches pay one-off
            # costs (kernel selection, bf16 warm-up) that later epochs do not.
            state.epoch_seconds = clock.median() * run.steps + (time.monotonic() - val_start)
            row = {"epoch": state.epoch, **row, "seconds": round(time.monotonic() - run.started, 2)}
            state.history.append(row)
            improved = state.stopper.update(row[cfg.monitor], state.epoch)
            best = improved or not (cfg.select_best or cfg.patience > 0)  # else follows the last
            if best and not run.save_every_epoch:
                run.keep_best()
            if ranks.leader:
                # The shares' record before the checkpoint, as metrics.csv (_save): a stop
                # between the two leaves an epoch that the resume drops (earlier_epochs), never
                # one of last.pt's epochs missing from distributed.json.
                if run.shard:
                    write_record(run.run_dir, run.shard, run.batch_size, len(run.shown))
                if run.save_every_epoch:
                    _save(run, best)
            cb.on_epoch_end(epoch_report(row, cfg, state.planned_epochs, best, improved))
            # Rank 0 decides, so that every rank leaves the loop at the same epoch.
            if from_leader(ranks, [int(state.stopper.should_stop)])[0]:
                return f"early stopping: no {cfg.monitor} improvement in {cfg.patience} epochs"
            # Threads for the cores idle now (2 cores, load 7-12: a CNN step 6.0 s on 2, 1.8 s on 1)
            setup_threads(share=local_world_size())
            plan_epochs(run)
            if cfg.time_budget > 0 and state.epoch >= state.planned_epochs < run.max_epochs:
                stop_reason = f"time budget of {cfg.time_budget:g} s reached"
        return stop_reason
    finally:  # also on Ctrl-C: the epochs so far are kept (last.pt resumes them)
        if ranks.leader and not run.save_every_epoch:
            _save(run, best=True, weights=run.best_weights)


def _save(run: Run, best: bool, weights: dict[str, torch.Tensor] | None = None) -> None:
    """metrics.csv first, the checkpoints last: last.pt is what a resume starts from, and it
    rewrites metrics.csv from the history it carries. A stop between the two then leaves a row
    that the resume writes again, never an epoch missing from the file."""
    write_metrics(run.run_dir / "metrics.csv", run.state.history)
    save_run_checkpoints(run, best, weights)


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
