"""The engine in this process: the same requests as the engine process, run here (the CLI, the batch, tests)."""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback
from MedFoundationSegLib.workflow.actions import EngineRequest, EngineResult, run_request


class InProcessEngine:
    """Runs requests on a Session of its own; ``submit`` queues them on a worker thread, ``run`` runs one now."""

    def __init__(self, session=None, worker=None):
        from MedFoundationSegLib.workflow.session import Session

        self.session = session or Session()
        self._worker = worker

    def run(self, request: EngineRequest, progress: ProgressCallback | None = None,
            cancelled: CancelCheck | None = None) -> EngineResult:
        return run_request(self.session, _own_copy(request), progress, cancelled)

    def submit(self, request: EngineRequest, name: str | None = None):
        """A job with ``done``, ``fraction``, ``message``, ``result`` (an EngineResult), ``error``, ``cancel()`` and
        ``preview`` (its slices so far)."""
        from MedFoundationSegLib.workflow.preview import submit_with_preview
        from MedFoundationSegLib.workflow.worker import shared_worker

        return submit_with_preview(self._worker or shared_worker(), name or request.action, self.session,
                                   _own_copy(request))


def _own_copy(request: EngineRequest) -> EngineRequest:
    """The request with its own copy of the voxels: a caller's volume may be a view of data it goes on editing
    (a Slicer volume node), and the engine keeps what it encoded under the volume's key."""
    if request.volume is None:
        return request
    volume = dataclasses.replace(request.volume, array=np.array(request.volume.array))
    return dataclasses.replace(request, volume=volume)
