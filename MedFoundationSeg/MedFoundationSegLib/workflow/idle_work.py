"""Work the engine does while the user looks at a result: encoding the slices the next clicks will ask about.

Why: LiteMedSAM hands clicked slices to MobileSAM (box_modes.click_model_route), whose embeddings of the box's
slices do not exist after the segmentation; the first click on each slice would wait for its encoding. The worker
runs these tasks only while no job waits, and stops one between two slices when a job arrives
(workflow/worker.py); an interrupted task resumes after that job unless a newer box replaced it.
"""

from __future__ import annotations

import collections
import logging
import weakref
from collections.abc import Callable

from MedFoundationSegLib.core.progress import CancelCheck, Cancelled

log = logging.getLogger(__name__)

IdleTask = Callable[[CancelCheck], None]


class IdleWork:
    """The tasks waiting for idle time, oldest first. Only the worker's thread touches it (jobs and idle tasks run
    there, one at a time)."""

    def __init__(self):
        self._tasks: collections.deque[IdleTask] = collections.deque()

    def __len__(self) -> int:
        return len(self._tasks)

    def replace(self, task: IdleTask) -> None:
        """``task`` as the only idle work: a new box makes the warming of the last one pointless."""
        self._tasks.clear()
        self._tasks.append(task)

    def next(self) -> IdleTask | None:
        """The next task, wrapped so that an interrupted one goes back to the front of the queue."""
        if not self._tasks:
            return None
        task = self._tasks.popleft()

        def run(cancelled: CancelCheck) -> None:
            try:
                task(cancelled)
            except Cancelled:
                self._tasks.appendleft(task)
        return run


def encode_later(load_predictor: Callable[[], object | None], first: int, last: int) -> IdleTask:
    """A task that loads a predictor (``load_predictor``: the Session's, so a loaded one is reused; None ends the
    task) and encodes slices ``first``..``last`` with it: those nearest the middle slice first, as many as its
    embedding cache holds (a larger box would evict the slices it encoded first). An interrupted task resumes where it
    stopped: encoded slices are cached."""

    def encode(cancelled: CancelCheck) -> None:
        target = load_predictor()
        if target is None:
            return
        middle = (first + last) // 2
        room = target.cache.budget_bytes // max(target.cache.size_of(target.embedding(middle)), 1)
        nearest = sorted(range(first, last + 1), key=lambda k: abs(k - middle))[:room]
        done = target.encode_slices(nearest, cancelled=cancelled)
        log.debug("idle time: %d %s slices encoded", done, target.model_name)
    return encode


def while_newest(predictors: collections.OrderedDict, load: Callable[[], object]) -> Callable[[], object | None]:
    """``load`` as a loader that gives None once the newest of ``predictors`` (a Session's, least recently used first)
    is neither the one newest now nor one ``load`` gave: another model or volume took over, and loading would evict
    what the user works with now."""
    allowed = weakref.WeakSet(list(predictors.values())[-1:])

    def loader():
        if predictors and next(reversed(predictors.values())) not in allowed:
            return None
        target = load()
        allowed.add(target)
        return target
    return loader
