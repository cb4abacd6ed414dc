"""Worker processes for CPU-bound picture work (decoding, fingerprints): Pillow holds the GIL
while decoding, so parallel means processes, not threads. No torch here: workers start fast."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor


def cpu_workers(requested: int = 0) -> int:
    """`requested` if > 0, else the CPUs this process may run on."""
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _start_worker(parent: int) -> None:
    """Pool workers leave Ctrl-C to the parent, which stops cleanly; otherwise every worker
    would print its own KeyboardInterrupt traceback. SIGTERM and SIGHUP get their default
    action back (a forked worker inherits the CLI's stop handler, which raises): the pool
    terminates its workers with SIGTERM when it shuts down early. Runs in the worker only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Linux: end this worker when its parent dies, even by SIGKILL (the OOM killer), where no
    clean-up of the parent's can run; without it the idle workers would stay forever, each
    blocked on a queue that no one will ever write to. Workers hold nothing worth saving.
    (The signal follows the thread that started the worker; catnet starts and shuts down every
    pool within one call, in one thread.)"""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # from linux/prctl.h
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still applies
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork, as torch's DataLoader does: workers start in milliseconds and do not re-import the
    # caller's script (spawn would, breaking scripts without a __main__ guard). The workers
    # only run Pillow and numpy copies, never OpenMP, so torch's threads in the parent are safe.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def process_pool(n_workers: int) -> ProcessPoolExecutor:
    """The one way catnet starts worker processes: forked where possible, Ctrl-C left to the
    parent. An executor, not multiprocessing.Pool: a worker killed by a decoder crash raises
    BrokenProcessPool in the parent instead of leaving it waiting forever."""
    return ProcessPoolExecutor(
        n_workers, mp_context=_pool_context(), initializer=_start_worker, initargs=(os.getpid(),)
    )
