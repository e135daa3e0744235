"""Shared pytest fixtures: the repository root, an isolated weights cache, and a local HTTP file server."""

from __future__ import annotations

import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# setup_env.py lives at the root; the Slicer-side Logic packages live in the module folders (Slicer puts those on
# sys.path itself). Neither is part of the pip-installed engine.
for path in (REPO, REPO / "MedFoundationSeg", REPO / "MedLAMLocalize"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# Mask decoders stay eager in the suite (and in the engine processes it starts), even where the developer's shell
# switched compiling on: it takes tens of seconds of CPU per new process. test_slice_predictor.py compiles one and
# checks it against the eager decoder.
os.environ["MEDFOUNDATIONSEG_COMPILE_DECODER"] = "0"


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def mrml():
    """A fresh headless MRML scene with Slicer's module logics and the slicer.util shims (slicer-core)."""
    from mrml_scene import mrml_env

    yield mrml_env()


@pytest.fixture(scope="session", autouse=True)
def engine_process():
    """The local engine process the Slicer Logic talks to by default, as in Slicer: started by the first Logic
    action that needs it (with this interpreter), shared by the tests, and stopped when the session ends."""
    from MedFoundationSegLogic import engine_process as processes

    engine = processes.LocalEngine(sys.executable)
    processes.set_default_engine(engine)
    yield engine
    engine.stop()
    processes.set_default_engine(None)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """An empty MEDFOUNDATIONSEG_CACHE, so a test never sees or touches the user's real weights."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDFOUNDATIONSEG_CACHE", str(cache))
    return cache


class FileServer:
    """Serves byte strings from memory on 127.0.0.1, with HTTP Range support and scripted misbehaviour.

    ``cut_after[path] = n`` closes the connection after n body bytes on the first request for ``path`` (a dropped
    connection); ``ignore_range`` makes the server answer 200 with the whole file to a Range request.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                server.requests.append((path, self.headers.get("Range")))
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                range_header = self.headers.get("Range")
                if range_header and not server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                for key, value in server.headers.get(path, {"Content-Type": "application/octet-stream"}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                cut = server.cut_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def file_server():
    server = FileServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def pytest_unconfigure(config):
    """End the process without native teardown when slicer-core and the itk wheel were both loaded.

    slicer-core bundles its own ITK (vtkITK) and the ``itk`` wheel brings another; with both in one process the
    static destructors at interpreter exit corrupt the heap ("malloc_consolidate(): unaligned fastbin chunk") after
    every test has run and been reported — turning a green run into an abort. Reproduced with
    test_slicer_segment_logic.py + test_propagate.py (2 of 3 runs); never inside a test. The results and the summary
    are already written when this runs; the exit status is pytest's own.
    """
    if "itk" in sys.modules and any(name.startswith("slicer_core") for name in sys.modules):
        import os

        status = getattr(config, "_medfoundationseg_exit_status", None)
        if status is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._medfoundationseg_exit_status = exitstatus
