"""The Slicer side of the engine: an HTTP client (``requests``, which Slicer ships) and the jobs it polls.

No torch here: volumes and masks go out as wire messages, results come back the same way. A job is polled from the
GUI (a QTimer) through its ``done``/``fraction``/``message`` properties; every poll is one short HTTP request, so
Slicer's event loop never waits on the engine.
"""

from __future__ import annotations

import time

import requests
from MedFoundationSegLib.core import wire
from MedFoundationSegLib.core.progress import Cancelled
from MedFoundationSegLib.workflow import transport
from MedFoundationSegLib.workflow.actions import EngineRequest, EngineResult

POLL_INTERVAL_S = 0.05
HARD_STOP_AFTER_S = 5.0  # a job still running this long after Cancel gets its engine restarted


class EngineError(RuntimeError):
    """The engine refused or failed an action; ``code`` says what kind (bad_input, missing_weights, engine_died...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class EngineClient:
    """One engine at ``url`` (http:// or https://), with its token."""

    def __init__(self, url: str, token: str | None = None, *, verify=True, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self._http = requests.Session()
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self.verify = verify  # given with every request: a session-wide setting loses to $REQUESTS_CA_BUNDLE
        self.timeout_s = timeout_s
        self._sent: dict[str, str] = {}  # Volume.key -> the engine's id for it
        self._engine_checked = False

    # --- plain calls -----------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, data: bytes | None = None, timeout_s: float | None = None):
        try:
            response = self._http.request(method, self.url + path, data=data, timeout=timeout_s or self.timeout_s,
                                          verify=self.verify)
        except requests.Timeout:
            raise EngineError("engine_busy", f"the engine at {self.url} did not answer in time") from None
        except requests.RequestException as error:
            raise EngineError("engine_unreachable", f"the engine at {self.url} is not answering "
                                                    f"({type(error).__name__})") from None
        if response.status_code >= 400:
            try:
                detail = response.json()["error"]
                raise EngineError(detail["code"], detail["message"])
            except (ValueError, KeyError, TypeError):
                raise EngineError(f"http_{response.status_code}", response.text[:200] or response.reason) from None
        return response

    def health(self) -> dict:
        return self._call("GET", "/health", timeout_s=5.0).json()

    def check_engine(self) -> None:
        """Refuse an engine that speaks another protocol than this side (``transport.PROTOCOL``): an engine installed
        before the extension was updated, or a remote one not updated with it, would misread requests or hand back
        results this side misreads. Asked once per client, before its first job."""
        if self._engine_checked:
            return
        health = self.health()
        if health.get("protocol") != transport.PROTOCOL:
            raise EngineError("engine_version", f"the engine at {self.url} is MedFoundationSeg "
                                                f"{health.get('version', '(unknown version)')} speaking protocol "
                                                f"{health.get('protocol', 1)}; this extension speaks protocol "
                                                f"{transport.PROTOCOL}: install the same MedFoundationSeg version for "
                                                "the engine and restart it")
        self._engine_checked = True

    def ensure_volume(self, volume) -> str:
        """The engine's id for ``volume``: sent once per voxel content (and again if the engine lost it)."""
        known = self._sent.get(volume.key) if volume.key else None
        if known is not None:
            try:
                self._call("GET", f"/volumes/{known}", timeout_s=5.0)
                return known
            except EngineError as error:
                if error.code != "unknown_volume":
                    raise
        volume_id = self._call("POST", "/volumes", data=transport.encode_volume(volume),
                               timeout_s=max(self.timeout_s, 600.0)).json()["volume_id"]
        if volume.key:
            self._sent[volume.key] = volume_id
        return volume_id

    # --- jobs ----------------------------------------------------------------------------------------------------
    def submit(self, request: EngineRequest, name: str | None = None, *, on_stuck=None) -> RemoteJob:
        self.check_engine()
        volumes = [request.volume] if request.volume is not None else []
        for template in request.templates:
            volumes += [template.image] + ([template.labels] if template.labels is not None else [])
        ids = {id(volume): self.ensure_volume(volume) for volume in volumes}
        reply = self._call("POST", "/jobs", data=transport.encode_job(request, ids)).json()
        job = RemoteJob(self, reply["job_id"], name or request.action, on_stuck=on_stuck)
        job.jobs_ahead = int(reply.get("jobs_ahead", 0))
        if job.jobs_ahead:
            job.message = f"waiting for {job.jobs_ahead} job(s) on the engine"
        return job

    def run(self, request: EngineRequest, progress=None, cancelled=None) -> EngineResult:
        """Submit and wait (scripts, tests, the batch); Cancelled when ``cancelled()`` turns true."""
        if cancelled is not None and cancelled():
            raise Cancelled(f"{request.action} cancelled before it started")
        job = self.submit(request)
        while not job.done:
            if cancelled is not None and cancelled() and not job.cancel_requested:
                job.cancel()
            if progress is not None:
                progress(job.fraction, job.message)
            time.sleep(POLL_INTERVAL_S)
        if job.error is not None:
            raise job.error
        if progress is not None:
            progress(1.0, job.message)
        return job.result


class RemoteJob:
    """A job on the engine, read like a local worker job: ``done``, ``fraction``, ``message``, ``result``, ``error``."""

    def __init__(self, client: EngineClient, job_id: str, name: str, *, on_stuck=None):
        self.client, self.job_id, self.name = client, job_id, name
        self.fraction, self.message, self.jobs_ahead = 0.0, "queued", 0  # message stays "queued" until first poll
        self.result: EngineResult | None = None
        self.error: BaseException | None = None
        self.error_traceback = ""
        self.cancel_requested: float | None = None
        self._done = False
        self._last_poll = 0.0
        self._on_stuck = on_stuck  # called when a cancelled job keeps running past HARD_STOP_AFTER_S

    @property
    def done(self) -> bool:
        if not self._done and time.monotonic() - self._last_poll >= POLL_INTERVAL_S:
            self.poll()
        return self._done

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def poll(self) -> None:
        self._last_poll = time.monotonic()
        try:
            status = self.client._call("GET", f"/jobs/{self.job_id}", timeout_s=10.0).json()
        except EngineError as error:
            if error.code == "engine_busy":  # a loaded machine, not a dead engine: ask again at the next poll
                self.message = "the engine is busy"
                return
            self._finish(EngineError("engine_died", f"the engine stopped while running {self.name} ({error}); "
                                                    "nothing in the scene was changed: run the action again (a "
                                                    "local engine starts anew)")
                         if error.code == "engine_unreachable" else error)
            return
        self.fraction, self.message = float(status.get("fraction", 0.0)), str(status.get("message", ""))
        self.jobs_ahead = int(status.get("jobs_ahead", 0))
        state = status["state"]
        if state == "done":
            data = self.client._call("GET", f"/jobs/{self.job_id}/result", timeout_s=600.0).content
            self.result = transport.decode_result(data)
            self._finish(None)
        elif state in ("failed", "cancelled"):
            detail = status.get("error") or {}
            message = detail.get("message", state)
            self._finish(Cancelled(message) if state == "cancelled" else
                         EngineError(detail.get("code", "internal"), message))
        elif self.cancel_requested and time.monotonic() - self.cancel_requested > HARD_STOP_AFTER_S:
            self._hard_stop()

    def preview_since(self, version: int) -> tuple[int, str | None, list[int], object]:
        """(version, axis, slice indices, their masks (n, h, w)) finished on the engine after ``version``
        (workflow/preview.py). A preview is never worth an error: an engine that cannot give one shows nothing."""
        try:
            data = self.client._call("GET", f"/jobs/{self.job_id}/preview?since={int(version)}", timeout_s=10.0)
            meta, arrays = wire.unpack(data.content)
        except (EngineError, wire.WireError):
            return int(version), None, [], None
        return int(meta.get("version", version)), meta.get("axis"), list(meta.get("indices") or []), \
            arrays.get("masks")

    def _hard_stop(self) -> None:
        if self._on_stuck is not None:
            self._on_stuck()
        self._finish(Cancelled(f"{self.name} did not stop within {HARD_STOP_AFTER_S:.0f} s of Cancel: the engine "
                               "was restarted"))

    def _finish(self, error: BaseException | None) -> None:
        self.error, self._done = error, True
        if error is None:
            self.fraction, self.message = 1.0, "done"
        else:
            self.message = "cancelled" if isinstance(error, Cancelled) else f"failed: {error}"

    def cancel(self) -> None:
        self.cancel_requested = self.cancel_requested or time.monotonic()
        try:
            self.client._call("POST", f"/jobs/{self.job_id}/cancel", timeout_s=5.0)
        except EngineError:
            pass  # the next poll reports what happened to the engine

    def wait(self, timeout_s: float | None = None) -> bool:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.done:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True
