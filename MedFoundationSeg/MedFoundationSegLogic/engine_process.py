"""The engines the Logic talks to: a local engine process it starts on demand (the default), or a remote one.

Local mode runs ``python -m MedFoundationSegLib.cli.main serve`` with the Python the engine is installed in, on
127.0.0.1, any free port, a fresh random token (in the environment, never on the command line), and standard input
tied to this process: when Slicer exits, however it exits, the engine's input closes and it stops. If the engine
dies, the next action starts a new one; a job that ignores Cancel gets its engine killed and restarted.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from MedFoundationSegLib.cli.serve_cli import READY_PREFIX, TOKEN_ENV
from MedFoundationSegLib.workflow.actions import EngineRequest, EngineResult

from .engine_client import EngineClient, EngineError


class LocalEngine:
    """An engine process on this machine, started when first needed and restarted when it died."""

    def __init__(self, python: str | None = None, *, startup_timeout_s: float = 180.0, env: dict | None = None):
        self.python = python or sys.executable
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.process: subprocess.Popen | None = None
        self._client: EngineClient | None = None
        self.restarts = 0
        self.log_path = Path(tempfile.gettempdir()) / f"medfoundationseg-engine-{os.getpid()}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> EngineClient:
        if not self.running:
            self._start()
        return self._client

    def _start(self) -> None:
        if self.process is not None:
            self.restarts += 1
        token = secrets.token_urlsafe(32)
        env = dict(self.env if self.env is not None else os.environ, **{TOKEN_ENV: token})
        log = open(self.log_path, "ab")
        command = [self.python, "-m", "MedFoundationSegLib.cli.main", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--exit-with-stdin"]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            env=env)
        except OSError as error:
            raise EngineError("engine_start", f"cannot start the engine with {self.python}: {error}") from None
        finally:
            log.close()
        ready = self._wait_ready()
        self._client = EngineClient(ready["url"], token)

    def _wait_ready(self) -> dict:
        lines: queue.Queue = queue.Queue()

        def read(stream) -> None:
            for line in iter(stream.readline, b""):
                lines.put(line.decode("utf-8", "replace"))
            lines.put(None)

        threading.Thread(target=read, args=(self.process.stdout,), daemon=True).start()
        end = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(READY_PREFIX):
                return json.loads(line[len(READY_PREFIX):])
        self.stop()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
        raise EngineError("engine_start", "the engine did not start" + (f": {tail[0]}" if tail else "") +
                          f" (log: {self.log_path})")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # the engine's cue to stop
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(5)
        self._client = None

    def kill(self) -> None:
        """Stop the engine now (a job that ignores Cancel); the next action starts a fresh one."""
        if self.running:
            self.process.kill()
            self.process.wait(10)

    # --- what the Logic calls ------------------------------------------------------------------------------------
    def submit(self, request: EngineRequest, name: str | None = None):
        return self._with_client(lambda client: client.submit(request, name, on_stuck=self.kill))

    def run(self, request: EngineRequest, progress=None, cancelled=None) -> EngineResult:
        return self._with_client(lambda client: client.run(request, progress, cancelled))

    def health(self) -> dict:
        return self._with_client(lambda client: client.health())

    def _with_client(self, call):
        """``call(client)``; when the engine does not answer because its process is dying (killed, crashed, not yet
        reaped), wait for it to end and call once more on a fresh engine."""
        try:
            return call(self.client())
        except EngineError as error:
            if error.code != "engine_unreachable" or self.process is None:
                raise
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                raise error from None
            return call(self.client())


class RemoteEngine:
    """An engine someone started elsewhere (``medfoundationseg serve --host 0.0.0.0 --token ...``)."""

    def __init__(self, url: str, token: str | None, *, verify=True):
        self._client = EngineClient(url, token, verify=verify)

    def client(self) -> EngineClient:
        return self._client

    def submit(self, request: EngineRequest, name: str | None = None):
        return self._client.submit(request, name)

    def run(self, request: EngineRequest, progress=None, cancelled=None) -> EngineResult:
        return self._client.run(request, progress, cancelled)

    def health(self) -> dict:
        return self._client.health()


URL_ENV = "MEDFOUNDATIONSEG_ENGINE_URL"  # set: use that (remote) engine; its token comes from TOKEN_ENV
PYTHON_ENV = "MEDFOUNDATIONSEG_ENGINE_PYTHON"  # the Python a local engine runs with
_DEFAULT = None


def engine_python() -> str:
    """``$MEDFOUNDATIONSEG_ENGINE_PYTHON``, else Slicer's own ``PythonSlicer`` (where the extension installs the
    engine), else this interpreter."""
    import shutil

    return os.environ.get(PYTHON_ENV) or shutil.which("PythonSlicer") or sys.executable


def default_engine():
    """The process-wide engine both modules share (models and embeddings stay warm across modules): the remote
    engine at ``$MEDFOUNDATIONSEG_ENGINE_URL`` when set, else a local engine process started on demand."""
    global _DEFAULT
    if _DEFAULT is None:
        url = os.environ.get(URL_ENV)
        if url:
            _DEFAULT = RemoteEngine(url, os.environ.get(TOKEN_ENV))
        else:
            _DEFAULT = LocalEngine(engine_python())
            import atexit

            atexit.register(_DEFAULT.stop)
    return _DEFAULT


def configure_engine(url: str = "", token: str = "", python: str = ""):
    """Point both modules at an engine and return it: the remote engine at ``url`` (with ``token``), or, for an
    empty ``url``, a local engine process run with ``python`` (empty: ``engine_python()``)."""
    url, token, python = url.strip(), token.strip(), python.strip()
    if url:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"an engine address starts with http:// or https://; got {url!r}")
        engine = RemoteEngine(url, token or None)
    else:
        if python and not Path(python).is_file():
            raise ValueError(f"no Python at {python}")
        engine = LocalEngine(python or engine_python())
    set_default_engine(engine)
    return engine


def describe(engine) -> str:
    """One line for the panel: where the engine runs and what it holds (starts a local engine if needed)."""
    health = engine.health()
    where = "local" if isinstance(engine, LocalEngine) else engine.client().url
    models = ", ".join(health.get("models") or []) or "no model loaded yet"
    return (f"Engine: {where}, device {health['device']}, {models}; {health['queue']} job(s) queued, "
            f"{health['rss_mb']:.0f} MB")


def set_default_engine(engine) -> None:
    """Point both modules at another engine (a remote one, or a local one with another Python)."""
    global _DEFAULT
    if _DEFAULT is not None and _DEFAULT is not engine and isinstance(_DEFAULT, LocalEngine):
        _DEFAULT.stop()
    _DEFAULT = engine  # None: the next default_engine() call makes a new one
