"""Each training process's share of an epoch, and the record of the shares (distributed.json).

Under torchrun every epoch is one permutation of the training pictures, seeded by (seed,
epoch), so every rank draws the same one without talking to the others; rank r takes every
world-th picture from position r. The shares are disjoint and together cover the epoch; they
differ in size by at most one picture. Every rank runs the same number of steps (a collective
that one rank skips would hang the others): each share is cut into that many nearly equal
batches. --batch-size stays the global batch: each rank takes ceil(batch / world) pictures a
step, so one step of N processes is one step of the single-process recipe (README "Beyond one
machine" says why).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catnet.errors import CatnetError
from catnet.models.checkpoint import weights_checksum
from catnet.runtime.compute import batches_of
from catnet.runtime.distributed import Ranks, all_sum, broadcast_object, gather_objects
from catnet.runtime.files import atomic_write_text
from catnet.training.results import TrainResult

RECORD = "distributed.json"


def set_hash(indices: np.ndarray) -> int:
    """An order-free hash of a multiset of indices: the sum of a 64-bit mix of each, mod 2^64.
    Shares that are disjoint and cover the epoch add up to the hash of the whole epoch (a
    picture twice and another missing would not, but for a 2^-64 chance)."""
    x = indices.astype(np.uint64)
    with np.errstate(over="ignore"):  # the mix wraps around on purpose (splitmix64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        return int(x.sum(dtype=np.uint64))


@dataclass
class Shard:
    """This rank's share of each epoch: which pictures, in which batches, with which random
    augmentation (a generator per rank and epoch, so resuming at an epoch repeats it)."""

    ranks: Ranks
    seed: int
    record: list[dict[str, Any]] = field(default_factory=list)  # per epoch: every rank's share

    def batch_size(self, global_batch: int) -> int:
        return math.ceil(global_batch / self.ranks.world)

    def steps(self, n_shown: int, global_batch: int) -> int:
        """Steps per epoch, the same on every rank (the longest share decides)."""
        if n_shown < self.ranks.world:
            raise CatnetError(
                f"{n_shown} training pictures cannot be shared among {self.ranks.world} "
                "processes: start fewer (torchrun --nproc-per-node)"
            )
        longest = math.ceil(n_shown / self.ranks.world)
        return max(1, math.ceil(longest / self.batch_size(global_batch)))

    def order(self, shown: np.ndarray, epoch: int) -> np.ndarray:
        """This rank's pictures for `epoch` (1-based), from the epoch's shared permutation."""
        rng = np.random.default_rng([self.seed, epoch])
        return shown[rng.permutation(len(shown))][self.ranks.rank :: self.ranks.world]

    def batches(self, share: np.ndarray, steps: int) -> list[np.ndarray]:
        """`steps` nearly equal batches; a share shorter than the step count (a handful of
        pictures on many ranks) repeats its own pictures rather than leave a batch empty."""
        if len(share) < steps:
            share = np.resize(share, steps)
        return np.array_split(share, steps)

    def generator(self, epoch: int) -> torch.Generator:
        """Augmentation randomness of this rank in this epoch: different on every rank."""
        seeds = np.random.SeedSequence([self.seed, epoch, self.ranks.rank + 1]).generate_state(1)
        return torch.Generator().manual_seed(int(seeds[0]))

    def part(self, array: np.ndarray) -> np.ndarray:
        """This rank's share of a fixed list (the validation pictures)."""
        return array[self.ranks.rank :: self.ranks.world]

    def note(self, epoch: int, share: np.ndarray) -> None:
        """Gather every rank's share size and set_hash for distributed.json (training group)."""
        mine = {"pictures": len(share), "set_hash": f"{set_hash(share):016x}"}
        self.record.append({"epoch": epoch, "ranks": gather_objects(self.ranks, mine)})


def epoch_batches(shown: np.ndarray, batch_size: int, epoch: int, gen: torch.Generator,
                  shard: Shard | None) -> tuple[np.ndarray, list[np.ndarray], torch.Generator]:  # fmt: skip
    """(this process's pictures of `epoch` (1-based), cut into batches, the generator for its
    augmentation). One process: all of `shown` in gen's random order and gen itself."""
    if shard is None:
        order = shown[torch.randperm(len(shown), generator=gen).numpy()]
        return order, [order[part] for part in batches_of(len(order), batch_size)], gen
    order = shard.order(shown, epoch)
    shard.note(epoch, order)
    return order, shard.batches(order, shard.steps(len(shown), batch_size)), shard.generator(epoch)


def reduce_row(ranks: Ranks, loss_sum: float, correct: float, seen: float) -> dict[str, float]:
    """train_loss and train_acc over every rank's pictures of the epoch."""
    loss_sum, correct, seen = all_sum(ranks, [loss_sum, correct, seen])
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def reduce_validation(ranks: Ranks, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """val_loss and val_acc over every rank's share of the validation pictures: logits (n,)
    float and labels (n,) 0/1 of this rank's share (all of them on one process)."""
    import torch.nn.functional as F

    if not ranks.active:  # the single-process numbers, computed as they always were
        return {
            "val_loss": F.binary_cross_entropy_with_logits(logits, labels.float()).item(),
            "val_acc": float(((logits > 0).long() == labels).float().mean()),
        }
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    correct = ((logits > 0).long() == labels.long()).sum()
    loss_sum, hits, n = all_sum(ranks, [float(bce), float(correct), float(len(labels))])
    return {"val_loss": loss_sum / max(n, 1), "val_acc": hits / max(n, 1)}


def earlier_epochs(run_dir: Path, before: int) -> list[dict[str, Any]]:
    """The shares of epochs 1 .. before-1 from a resumed run's distributed.json (if any)."""
    try:
        epochs = json.loads((run_dir / RECORD).read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [e for e in epochs if isinstance(e, dict) and e.get("epoch", before) < before]


def write_record(run_dir: Path, shard: Shard, global_batch: int, n_shown: int,
                 weights: list[str] | None = None) -> None:  # fmt: skip
    """distributed.json in the run folder (rank 0 only): what each rank did, checkable. Every
    epoch adds its shares; the end of the run adds each rank's final weights checksum."""
    ranks = shard.ranks
    record = {
        "world_size": ranks.world,
        "backend": ranks.backend,
        "timeout_s": ranks.timeout,
        "batch_size_per_rank": shard.batch_size(global_batch),
        "effective_batch_size": shard.batch_size(global_batch) * ranks.world,
        "train_pictures_per_epoch": n_shown,
        "epochs": shard.record,
        "final_weights_sha256": weights or [],
    }
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=1) + "\n", what=RECORD)


def end_of_run(shard: Shard | None, run_dir: Path, weights: dict[str, torch.Tensor],
               global_batch: int, n_shown: int, finalize: Callable[[], TrainResult],
               ) -> TrainResult:  # fmt: skip
    """Rank 0 records every rank's final weights (they must be equal) and finalizes the run;
    the others wait for it on the long-timeout group and return the same result."""
    if shard is None:
        return finalize()
    sums = gather_objects(shard.ranks, weights_checksum(weights))
    result = None
    if shard.ranks.leader:
        write_record(run_dir, shard, global_batch, n_shown, sums)
        result = finalize()
    return broadcast_object(shard.ranks, result)
