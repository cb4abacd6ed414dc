"""Several training processes under torchrun: the process group, its collectives and their errors.

torchrun (`python -m torch.distributed.run`) starts one process per GPU (or per CPU share) and
tells each its place in the environment: RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT).
Without those variables nothing here runs and training is the single-process loop, unchanged.

Two groups over the same processes, because the waits differ by orders of magnitude:
- the default group (`setup_timeout`, hours): rank 0 alone builds the decoded-picture and
  feature caches while the others wait at a barrier, and the others wait while rank 0 finishes
  the run (calibration, checkpoint, plots);
- the training group (`timeout`, seconds to minutes): every step's gradient all-reduce and the
  epoch-end reductions. A rank that dies or hangs makes the others fail within this time with a
  clear message instead of waiting forever.
Backends: NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from catnet.errors import EXIT_SOME_FAILED, CatnetError
from catnet.runtime.compute import Compute

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it with more than one process, else None."""
    if not all(os.environ.get(name, "").isdigit() for name in TORCHRUN_VARIABLES):
        return None
    return int(os.environ["RANK"]) if int(os.environ["WORLD_SIZE"]) > 1 else None


def local_world_size() -> int:
    """Processes torchrun started on this machine (they share its cores)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() and torchrun_rank() is not None else 1


@dataclass
class Ranks:
    """Where this process stands among the training processes; rank 0 writes and speaks."""

    rank: int = 0
    world: int = 1
    backend: str = ""
    timeout: float = 0.0  # s, training collectives
    group: Any = None  # the training group (short timeout); None = the default group
    owns_group: bool = False  # this code started the default group, so it ends it

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def start(compute: Compute, timeout: float, setup_timeout: float) -> tuple[Ranks, Compute]:
    """Join torchrun's process group (or the caller's, if it already started one) and place
    this rank on its GPU. Outside torchrun: (SINGLE, compute) and nothing happens."""
    if torchrun_rank() is None and not dist.is_initialized():
        return SINGLE, compute
    if compute.device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        compute = dataclasses.replace(compute, device=torch.device("cuda", local))
    backend = "nccl" if compute.device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        try:
            dist.init_process_group(
                backend, timeout=datetime.timedelta(seconds=max(setup_timeout, timeout))
            )
        except (ValueError, RuntimeError) as exc:  # no MASTER_ADDR, an unreachable rendezvous
            raise CatnetError(
                f"RANK, WORLD_SIZE and LOCAL_RANK are set, but the process group could not "
                f"start: {_first_sentence(str(exc))}",
                hint="start several processes with torchrun (README 'Beyond one machine'), "
                "or unset those variables to train in one process",
            ) from None
    group = dist.new_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), backend, timeout, group, owns)
    return ranks, compute


def finish(ranks: Ranks) -> None:
    """Leave the process group after a run that ended normally (not after a failure: a peer
    may be gone, and tearing down would wait for it)."""
    if ranks.active and ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def collective_errors(ranks: Ranks) -> Iterator[None]:
    """A collective that failed (a peer's process ended, or it did not answer within the
    timeout) becomes one clear CatnetError (exit 1) instead of a C++ traceback or a hang."""
    try:
        yield
    except RuntimeError as exc:
        if not (ranks.active and lost_peer(exc)):
            raise
        detail = _first_sentence(str(exc)) or type(exc).__name__
        raise CatnetError(
            f"rank {ranks.rank} of {ranks.world}: another training process stopped answering "
            f"(it ended, or sent nothing for {ranks.timeout:g} s): {detail}",
            exit_code=EXIT_SOME_FAILED,
            hint="torchrun's summary names the rank that failed first; last.pt holds the last "
            "finished epoch (catnet train --resume RUN/last.pt)",
        ) from None


def lost_peer(exc: RuntimeError) -> bool:
    """Whether exc is a failed collective: torch raises DistError for most, but gloo's "Connection
    closed by peer" and "Timed out waiting ... for recv" still come as plain RuntimeErrors,
    recognised by the library that raised them."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text


def _first_sentence(text: str) -> str:
    """ "[.../pair.cc:561] Connection closed by peer [::1]:123. This is typically ..." ->
    "Connection closed by peer [::1]:123"."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    if text.startswith("[") and "] " in text:  # the C++ source location
        text = text.split("] ", 1)[1]
    return text.split(". ", 1)[0][:300]


def barrier_long(ranks: Ranks) -> None:
    """Wait for every rank on the default (long-timeout) group."""
    if ranks.active:
        dist.barrier()


@contextlib.contextmanager
def leader_first(ranks: Ranks, cached: bool = True) -> Iterator[None]:
    """Rank 0 runs the block first (building a cache); the others wait, then run it (reading
    the cache). The wait is on the long-timeout group: building may take hours. Without a
    cache (`cached` False) there is nothing to share and every rank runs the block at once."""
    wait = ranks.active and cached
    if wait and not ranks.leader:
        barrier_long(ranks)
    yield
    if wait and ranks.leader:
        barrier_long(ranks)


def broadcast_object(ranks: Ranks, value: Any, long: bool = True) -> Any:
    """Rank 0's `value` on every rank (a small picklable object)."""
    if not ranks.active:
        return value
    box = [value if ranks.leader else None]
    dist.broadcast_object_list(box, src=0, group=None if long else ranks.group)
    return box[0]


def gather_objects(ranks: Ranks, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (training group)."""
    if not ranks.active:
        return [value]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, value, group=ranks.group)
    return out


def all_sum(ranks: Ranks, values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64 on the CPU: exact for counts, and gloo and
    NCCL both take it; NCCL needs it on the GPU)."""
    if not ranks.active:
        return values
    device = "cuda" if ranks.backend == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, group=ranks.group)
    return tensor.cpu().tolist()


def from_leader(ranks: Ranks, values: list[int]) -> list[int]:
    """Rank 0's integers on every rank: decisions (stop, planned epochs) that rank 0's clock
    makes must be the same everywhere, or the ranks' step counts part and a collective hangs."""
    if not ranks.active:
        return values
    device = "cuda" if ranks.backend == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0, group=ranks.group)
    return [int(v) for v in tensor.cpu().tolist()]


def wrap_model(model: torch.nn.Module, compute: Compute, ranks: Ranks,
               sync_buffers: bool = True) -> torch.nn.Module:  # fmt: skip
    """The module that training steps call: under torchrun the DistributedDataParallel
    wrapper, which averages the gradients over the ranks during backward (on the training
    group) and, with sync_buffers, sends rank 0's batch-norm statistics before every step
    (each rank's forward then updates its own copy: share_weights(buffers_only) evens them)."""
    if not ranks.active:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options: dict[str, Any] = {}
    if not sync_buffers:  # torch 2.14 renamed broadcast_buffers (and warns on the old name)
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        options["forward_sync_buffers" if new_name else "broadcast_buffers"] = False
    device_ids = [compute.device.index] if compute.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, process_group=ranks.group,
                                   **options)  # fmt: skip


def share_weights(ranks: Ranks, module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Overwrite every rank's weights (or only buffers: batch-norm statistics) of `module`
    with rank 0's (training group)."""
    if not ranks.active:
        return
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0, group=ranks.group)
