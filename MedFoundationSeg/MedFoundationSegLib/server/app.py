"""The engine process's HTTP API (``medfoundationseg serve``): volumes in once, jobs by id, results as wire messages.

Routes (every one needs ``Authorization: Bearer <token>`` when the engine has a token):
  GET  /health                 device, models loaded, memory, queue
  GET  /volumes/<id>           200 when the engine holds that volume, else 404
  POST /volumes                a wire message with the array ``voxels`` and the geometry -> {"volume_id"}
  POST /jobs                   a wire message: action, volume ids, options, params (+ arrays) -> {"job_id"}
  GET  /jobs/<id>              state, fraction, message, jobs ahead, typed error
  GET  /jobs/<id>/result       the result as a wire message
  GET  /jobs/<id>/preview?since=<version>   the slices finished since that version, as a wire message
  POST /jobs/<id>/cancel       ask the job to stop at its next step

Why the standard library's threaded HTTP server: the traffic is a handful of requests per action from one or two
clients, every body size is checked before it is read, and the engine process stays free of web frameworks.
Every error is one JSON object ``{"error": {"code", "message"}}`` with a fitting HTTP status; nothing from a request
is ever unpickled or opened as a path.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from MedFoundationSegLib import __version__
from MedFoundationSegLib.core import wire
from MedFoundationSegLib.server.store import JobTable, VolumeStore
from MedFoundationSegLib.workflow.transport import (
    PROTOCOL,
    decode_job,
    encode_result,
    job_status,
    volume_from_message,
)

log = logging.getLogger(__name__)

JOB_PATH = re.compile(r"^/jobs/([0-9a-f]{32})(/result|/cancel|/preview)?$")
VOLUME_PATH = re.compile(r"^/volumes/([0-9a-f]{32})$")


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


class Engine:
    """The state behind the API: one session (models + embeddings), the volumes, the jobs and one worker per device."""

    def __init__(self, *, token: str | None, max_body_bytes: int, volume_budget_bytes: int):
        from MedFoundationSegLib.workflow.session import Session
        from MedFoundationSegLib.workflow.worker import Worker

        self.token = token
        self.max_body_bytes = int(max_body_bytes)
        self.session = Session()
        self.worker = Worker("MedFoundationSeg engine", idle=self.session.idle_work.next)
        self.volumes = VolumeStore(volume_budget_bytes)
        self.jobs = JobTable()

    def health(self) -> dict:
        import torch

        from MedFoundationSegLib.runtime.encoder_runtime import select_device

        predictors = list(self.session._predictors.values())
        return {"version": __version__, "protocol": PROTOCOL, "pid": os.getpid(), "device": str(select_device("auto")),
                "cuda": torch.cuda.is_available(), "models": sorted({p.model_name for p in predictors}),
                "slices_encoded": self.session.slices_encoded(), "volumes": len(self.volumes),
                "volume_bytes": self.volumes.nbytes(), "evidence_bytes": self.session.evidence.nbytes(),
                "queue": self.worker.queued(), "idle_work": len(self.session.idle_work) + int(self.worker.idle_running),
                "rss_mb": round(_rss_bytes() / 2 ** 20, 1)}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = f"MedFoundationSeg/{__version__}"
    protocol_version = "HTTP/1.1"
    engine: Engine  # set on the subclass the server builds

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            self._authorise()
            path, _, query = self.path.partition("?")
            status, body, kind = self._route(method, path, query)
        except HTTPError as error:
            status, body, kind = error.status, _error_body(error.code, str(error)), "application/json"
        except (wire.WireError, ValueError, KeyError, TypeError) as error:
            status, body, kind = 400, _error_body("bad_request", _one_line(error)), "application/json"
        except Exception as error:  # the engine keeps serving; the client gets the message
            log.exception("request %s %s failed", method, self.path)
            status, body, kind = 500, _error_body("internal", _one_line(error)), "application/json"
        self._send(status, body, kind)

    def _authorise(self) -> None:
        token = self.engine.token
        if not token:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode()):
            raise HTTPError(401, "unauthorized", "missing or wrong engine token")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HTTPError(411, "length_required", "the request needs a Content-Length")
        if int(length) > self.engine.max_body_bytes:
            raise HTTPError(413, "too_large", f"the request body of {int(length)} bytes is over the engine's limit "
                                              f"of {self.engine.max_body_bytes} bytes")
        data = self.rfile.read(int(length))
        if len(data) != int(length):
            raise HTTPError(400, "bad_request", "the request body ended early")
        return data

    def _route(self, method: str, path: str, query: str = ""):
        engine = self.engine
        if method == "GET" and path == "/health":
            return 200, _json(engine.health()), "application/json"
        if path == "/volumes" and method == "POST":
            meta, voxels = volume_from_message(self._body(), engine.max_body_bytes)
            return 200, _json({"volume_id": engine.volumes.add(meta, voxels)}), "application/json"
        match = VOLUME_PATH.match(path)
        if match and method == "GET":
            if match.group(1) not in engine.volumes:
                raise HTTPError(404, "unknown_volume", f"volume {match.group(1)} is not on the engine")
            return 200, _json({"volume_id": match.group(1)}), "application/json"
        if path == "/jobs" and method == "POST":
            request = decode_job(self._body(), engine.volumes, engine.max_body_bytes)
            return 200, _json(self._submit(request)), "application/json"
        match = JOB_PATH.match(path)
        if match:
            return self._job_route(method, match.group(1), match.group(2), query)
        raise HTTPError(404 if method in ("GET", "POST") else 405, "not_found", f"no route {method} {path}")

    def _submit(self, request) -> dict:
        from MedFoundationSegLib.workflow.preview import submit_with_preview

        job = submit_with_preview(self.engine.worker, request.action, self.engine.session, request)
        return {"job_id": self.engine.jobs.add(job), "jobs_ahead": self.engine.worker.jobs_ahead(job)}

    def _job_route(self, method: str, job_id: str, tail: str | None, query: str = ""):
        try:
            job = self.engine.jobs.get(job_id)
        except KeyError as error:
            raise HTTPError(404, "unknown_job", str(error.args[0])) from None
        if tail == "/cancel" and method == "POST":
            job.cancel()
            return 200, _json({"cancelling": not job.done}), "application/json"
        if tail == "/result" and method == "GET":
            if not job.done:
                raise HTTPError(409, "not_done", "the job has not finished")
            if job.error is not None:
                raise HTTPError(409, "failed", f"the job ended without a result: {_one_line(job.error)}")
            return 200, encode_result(job.result), "application/octet-stream"
        if tail == "/preview" and method == "GET":
            return 200, _preview_message(job, query), "application/octet-stream"
        if tail is None and method == "GET":
            return 200, _json(job_status(job, self.engine.worker)), "application/json"
        raise HTTPError(405, "method_not_allowed", f"{method} is not allowed on /jobs/<id>{tail or ''}")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _preview_message(job, query: str) -> bytes:
    """The job's slices finished after version ``since`` (a query parameter, default 0)."""
    from urllib.parse import parse_qs

    from MedFoundationSegLib.workflow.preview import slices_of

    values = parse_qs(query).get("since", ["0"])
    if len(values) != 1 or not values[0].isdigit():
        raise HTTPError(400, "bad_request", "since must be one whole number >= 0")
    version, axis, indices, masks = slices_of(job, int(values[0]))
    return wire.pack({"version": version, "axis": axis, "indices": indices},
                     {} if masks is None else {"masks": masks})


def _json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def _error_body(code: str, message: str) -> bytes:
    return _json({"error": {"code": code, "message": message}})


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


def make_server(host: str, port: int, engine: Engine, *, certfile: str | None = None,
                keyfile: str | None = None) -> ThreadingHTTPServer:
    """The HTTP(S) server around ``engine``; TLS when a certificate is given."""
    handler = type("EngineHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if certfile:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
