"""The annotation page's long jobs (propagation, export): one at a time, in a thread, stoppable, with progress.

A job's record is what the page shows: ``id`` (1, 2, …), ``name``, ``state`` (running, done, stopped, failed),
``done``, ``total``, ``frame`` (the last one done) and ``message``. ``notify`` receives ``{"type": "job", ...}``
when a job starts and ends and ``{"type": "progress", ...}`` after each frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vosrr.segmenter import AnnotationError

__all__ = ["BusyError", "Event", "JobCancelledError", "Jobs"]

Event = dict[str, object]


class BusyError(RuntimeError):
    """Another job (propagation or export) is running; stop it first."""


class JobCancelledError(Exception):
    """A job was asked to stop (raised by the job's own work, after a frame)."""


class Jobs:
    """At most one job running, in a thread of its own, under ``lock`` (the work it shares with other callers).

    ``status()`` is sent as an ``info`` event when a job ends, so that the page shows the files it left.
    """

    def __init__(self, lock: threading.RLock, notify: Callable[[Event], None], status: Callable[[], Event]) -> None:
        self.lock, self.notify, self.status = lock, notify, status
        self.cancel = threading.Event()
        """set to ask the running job to stop after its current frame"""
        self.record: Event | None = None
        """the running or last job"""
        self._thread: threading.Thread | None = None
        self._count = 0

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread; ``BusyError`` if a job runs."""
        with self.lock:
            if self.busy:
                raise BusyError(f"{self.record and self.record['name']} is running; stop it first")
            self.cancel.clear()
            self._count += 1
            self.record = {"id": self._count, "name": name, "state": "running", "done": 0, "total": 0, "frame": None}
            self.record["message"] = None
            self._thread = threading.Thread(target=self._run, args=(work,), name=f"vosrr-{name}", daemon=True)
            self._thread.start()
        self.notify({"type": "job", "job": dict(self.record)})

    def _run(self, work: Callable[[], None]) -> None:
        assert self.record is not None
        try:
            with self.lock:
                work()
            self.record["state"] = "stopped" if self.cancel.is_set() else "done"
        except JobCancelledError:
            self.record["state"] = "stopped"
        except AnnotationError as error:
            self.record.update(state="failed", message=str(error))
        except Exception as error:  # shown on the page; the server goes on
            self.record.update(state="failed", message=f"{type(error).__name__}: {error}")
        self.notify({"type": "job", "job": dict(self.record)})
        self.notify({"type": "info", **self.status()})

    def advance(self, index: int) -> bool:
        """Count frame ``index`` as done and report it; False when the job has been asked to stop."""
        assert self.record is not None
        self.record["done"] = int(self.record["done"]) + 1  # type: ignore[call-overload]
        self.record["frame"] = index
        self.notify({"type": "progress", "frame": index, "done": self.record["done"], "total": self.record["total"]})
        return not self.cancel.is_set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the running job to stop after its current frame, and wait for it."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.cancel.set()
            thread.join(timeout)

    def wait(self, timeout: float | None = None) -> Event | None:
        """Wait for the running job to end; its final record."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.record
