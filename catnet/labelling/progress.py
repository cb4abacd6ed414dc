"""One background job at a time (ranking or Teach) and what the page shows of its progress."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from catnet.errors import CatnetError
from catnet.training.results import TrainCallbacks

log = logging.getLogger("catnet.label")


class JobProgress:
    """A thread-safe snapshot of the running job, read by the page every second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"phase": "idle", "running": False}
        self._thread: threading.Thread | None = None

    def update(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def start(self, name: str, work: Callable[[], None]) -> bool:
        """Run work() in a daemon thread; False when a job is already running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._state = {"phase": name, "running": True, "job": name}
            self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
            self.update(phase="done", running=False)
        except CatnetError as exc:
            self.update(phase="failed", running=False, error=exc.message)
        except Exception as exc:  # the page must hear about it; the server keeps going
            log.exception("background job failed")
            self.update(phase="failed", running=False, error=f"{type(exc).__name__}: {exc}")


class TeachCallbacks(TrainCallbacks):
    """Training progress into a JobProgress."""

    def __init__(self, job: JobProgress) -> None:
        self.job = job

    def on_message(self, text: str) -> None:
        self.job.update(message=text)

    def on_decode(self, done: int, total: int) -> None:
        self.job.update(phase="reading pictures", done=done, total=total)

    def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None:
        self.job.update(phase="training", epoch=epoch, epochs=planned_epochs, done=0, total=steps)

    def on_batch(self, step: int, steps: int, loss: float) -> None:
        self.job.update(done=step, total=steps, loss=round(loss, 4))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.job.update(val_acc=row.get("val_acc"))
