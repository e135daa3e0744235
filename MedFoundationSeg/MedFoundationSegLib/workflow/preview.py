"""A running job's result, slice by slice, for a client to show before the job ends.

The engine's slice loops (propagation, box prompts, click corrections) call ``core.progress.show_slice`` each time
they accept a slice's mask; the job runner points those calls at the job's ``SlicePreview``. A client asks for the
slices updated since the version it last saw, so each poll carries only what changed. A preview is a preview: the
job's result (after learning and the graph cut) is what gets written, and it may differ from it.
"""

from __future__ import annotations

import threading

import numpy as np


class SlicePreview:
    """The latest mask of every slice a job has finished, along the job's axis. Thread-safe: the job's thread
    publishes, request threads read."""

    def __init__(self, axis: str):
        self.axis = axis
        self._lock = threading.Lock()
        self._version = 0
        self._slices: dict[int, tuple[int, np.ndarray]] = {}  # index -> (version, mask of that slice)

    def publish(self, index: int, mask_hw: np.ndarray) -> None:
        mask = np.array(mask_hw, bool)  # a copy: the caller goes on editing its array
        with self._lock:
            self._version += 1
            self._slices[int(index)] = (self._version, mask)

    def since(self, version: int) -> tuple[int, list[int], np.ndarray | None]:
        """(latest version, the slice indices updated after ``version``, their masks stacked (n, h, w), bool)."""
        with self._lock:
            latest = self._version
            updated = sorted(index for index, (v, _) in self._slices.items() if v > int(version))
            masks = [self._slices[index][1] for index in updated]
        return latest, updated, np.stack(masks) if masks else None


def slices_of(job, since: int) -> tuple[int, str | None, list[int], np.ndarray | None]:
    """(version, axis, indices, masks) of an in-process worker job's preview (see ``SlicePreview.since``); a job
    without a preview has nothing to show."""
    preview = getattr(job, "preview", None)
    if preview is None:
        return int(since), None, [], None
    version, indices, masks = preview.since(since)
    return version, preview.axis, indices, masks


def submit_with_preview(worker, name: str, session, request):
    """Queue ``request`` on ``worker`` (a workflow.worker.Worker) with a SlicePreview the job publishes to; the job
    carries it as ``job.preview``."""
    from MedFoundationSegLib.workflow.actions import run_request

    preview = SlicePreview(request.options.axis)
    job = worker.submit(name, run_request, session, request, preview=preview)
    job.preview = preview
    return job
