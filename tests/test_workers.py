"""catnet.runtime.workers: the one process-pool factory."""

from __future__ import annotations

import signal

from catnet.runtime.workers import cpu_workers, process_pool


def test_pool_workers_leave_ctrl_c_to_the_parent() -> None:
    # Decoding and the doctor's fingerprints share this pool: no worker may print its own
    # KeyboardInterrupt traceback when the user presses Ctrl-C.
    with process_pool(2) as pool:
        handlers = {pool.submit(signal.getsignal, signal.SIGINT).result() for _ in range(4)}
    assert handlers == {signal.SIG_IGN}
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the parent's is untouched


def test_cpu_workers_honours_a_request() -> None:
    assert cpu_workers(3) == 3
    assert cpu_workers(0) >= 1
