"""catnet.runtime.workers: the one process-pool factory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


KILLED_PARENT = """
import os, signal
from catnet.runtime.workers import process_pool
pool = process_pool(2)
pids = {pool.submit(os.getpid).result() for _ in range(8)}
print(" ".join(map(str, pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of ours can run
"""


@pytest.mark.slow  # a parent process, killed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    # Output to a file, not a pipe: orphaned workers would hold a pipe open, and wait forever.
    out = tmp_path / "pids.txt"
    with out.open("w") as fh:
        done = subprocess.run([sys.executable, "-c", KILLED_PARENT], stdout=fh, timeout=120)
    assert done.returncode == -signal.SIGKILL
    pids = [int(p) for p in out.read_text().split()]
    assert pids
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        time.sleep(0.1)
    for pid in alive:  # leave no orphan behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"orphaned workers still running: {alive}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it
