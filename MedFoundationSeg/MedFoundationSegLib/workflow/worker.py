"""One persistent background thread for torch work.

Why one thread: models, embedding caches and cuDNN autotuning stay warm across actions (a fresh thread per request
re-pays that), and jobs never run concurrently on one model. The GUI submits a job and polls it (a QTimer in Slicer);
results are applied to the scene on the GUI thread, never from the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any

from MedFoundationSegLib.core.progress import Cancelled

log = logging.getLogger(__name__)


class Job:
    """A submitted call: its progress, and its result or error once done. Thread-safe to read from the GUI."""

    def __init__(self, name: str, function: Callable[..., Any], args: tuple, kwargs: dict):
        self.name = name
        self._function, self._args, self._kwargs = function, args, kwargs
        self._cancel = threading.Event()
        self._done = threading.Event()
        self.fraction = 0.0
        self.message = "queued"
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_traceback = ""
        self.preview = None  # a workflow.preview.SlicePreview when the submitter wants slices shown as they come

    # called by the worker thread
    def _run(self) -> None:
        if self._cancel.is_set():
            self.error, self.message = Cancelled(f"{self.name} cancelled before it started"), "cancelled"
            self._done.set()
            return
        try:
            self.message = "running"
            self.result = self._function(*self._args, progress=self._progress, cancelled=self._cancel.is_set,
                                         **self._kwargs)
            self.fraction, self.message = 1.0, "done"
        except Cancelled as error:
            self.error, self.message = error, "cancelled"
        except BaseException as error:  # reported to the GUI, never lost in the thread
            self.error, self.message = error, f"failed: {error}"
            self.error_traceback = traceback.format_exc()
            log.error("%s failed:\n%s", self.name, self.error_traceback)
        finally:
            self._done.set()

    def _progress(self, fraction: float, message: str = "") -> None:
        self.fraction = float(fraction)
        if message:
            self.message = message

    # called by the GUI
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def preview_since(self, version: int):
        """The slices the job finished after ``version`` (workflow/preview.py), read like an engine job's."""
        from MedFoundationSegLib.workflow.preview import slices_of

        return slices_of(self, version)


class Worker:
    """A single daemon thread that runs submitted jobs in order. ``idle``: where it asks for work to do while no job
    waits (``IdleWork.next``: a task taking a cancel check, or None); a job submitted meanwhile makes the task's
    cancel check true, so the job waits at most for the task's current step."""

    def __init__(self, name: str = "MedFoundationSeg worker", idle: Callable[[], Callable | None] | None = None):
        self._idle = idle
        self.idle_running = False  # an idle task is being looked for or run (the engine's /health reports it)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []  # submitted, not started yet (in order)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, name: str, function: Callable[..., Any], *args, **kwargs) -> Job:
        """Queue ``function(*args, progress=..., cancelled=..., **kwargs)``; returns its Job at once."""
        if not self._thread.is_alive():
            raise RuntimeError("the worker has been shut down")
        job = Job(name, function, args, kwargs)
        with self._lock:
            self._waiting.append(job)
        self._queue.put(job)
        return job

    def jobs_ahead(self, job: Job) -> int:
        """How many jobs run before ``job`` starts (0 once it runs)."""
        with self._lock:
            return self._waiting.index(job) + 1 if job in self._waiting else 0

    def queued(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _loop(self) -> None:
        while True:
            if self._idle is not None and self._queue.empty() and self._run_idle():
                continue
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
            job._run()

    def _run_idle(self) -> bool:
        """Run one idle task; False when there is none. A failing task is logged, never fatal: it only warms caches."""
        self.idle_running = True
        try:
            task = self._idle()
            if task is None:
                return False
            task(lambda: not self._queue.empty())
        except Exception:  # noqa: BLE001 - nothing the user asked for is lost
            log.warning("idle work failed:\n%s", traceback.format_exc())
        finally:
            self.idle_running = False
        return True

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    @property
    def thread_ident(self) -> int | None:
        return self._thread.ident


_SHARED: Worker | None = None
_SHARED_LOCK = threading.Lock()


def shared_worker() -> Worker:
    """The process-wide worker every Slicer module submits to: one thread, so torch work never runs twice at once and
    models stay warm across modules. Restarted if it was shut down."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED._thread.is_alive():
            _SHARED = Worker("MedFoundationSeg worker")
        return _SHARED
