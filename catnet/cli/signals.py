"""SIGTERM (a cluster scheduler, `docker stop`) and SIGHUP (a closed terminal) stop a command the
way Ctrl-C does: the handler raises catnet.errors.Stopped, a KeyboardInterrupt, so the paths
that keep last.pt, flush predict's rows and print the resume command run for it too. The exit
code is 128 + the signal number (143, 129). A second signal while the first is being handled
ends the process at once. Installed by the entry point only: library code leaves signals alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

from catnet.errors import Stopped

STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
_received: list[int] = []


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _received:  # asked twice: the user (or the scheduler) will not wait
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe
                stream.flush()
        os._exit(128 + signum)
    _received.append(signum)
    raise Stopped(signum, STOP_SIGNALS.get(signum, f"signal {signum}"))


def install_stop_handlers() -> None:
    """Make SIGTERM and SIGHUP raise Stopped in the main thread (call once, at start-up)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # started under nohup: a closed terminal must not stop it
        signal.signal(signum, _on_stop_signal)
