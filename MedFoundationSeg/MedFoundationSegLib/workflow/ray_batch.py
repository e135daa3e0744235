"""Batch annotation over a Ray cluster: the serial batch's cases and outputs, spread over long-lived workers.

One worker per GPU (or per ``cpus_per_worker`` CPU cores) loads the model once and takes cases as they come, largest
volumes first. A case whose worker dies (killed, out of memory, node lost) goes back to the queue and runs on the next
free worker, up to ``retries`` times, then is recorded as failed with the reason. Each case is written atomically by
the worker that finished it (``case_outputs.write_case``), so a stopped run resumes like a local one: finished cases are
skipped, interrupted ones redone. ``summary.csv`` and ``run_report.json`` (per case: seconds, worker, attempts) are
written at the end and on Ctrl-C.

Ray is imported only here and only when a run asks for it; queries and the output folder must be on a filesystem every
node sees under the same path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from MedFoundationSegLib.core.progress import report
from MedFoundationSegLib.core.volume_files import voxel_count
from MedFoundationSegLib.io import case_outputs
from MedFoundationSegLib.workflow.batch import (
    SUMMARY_NAME,
    BatchError,
    CaseOutcome,
    case_names,
    run_one_case,
    write_summary,
)

log = logging.getLogger(__name__)

RUN_REPORT_NAME = "run_report.json"


@dataclasses.dataclass
class ClusterOptions:
    """Where and how wide a Ray batch runs."""

    address: str = "local"  # "local": a private cluster on this machine; "auto": the running one; or HOST:PORT
    workers: int | None = None  # None: one per GPU, else one per cpus_per_worker CPU cores
    cpus_per_worker: int = 2
    retries: int = 2  # re-runs of a case whose worker died, before it is recorded as failed


@dataclasses.dataclass
class _Attempt:
    query: object
    name: str
    attempts: int = 0
    started: float = 0.0
    worker: int = -1  # index of the worker it was handed to


class CaseWorker:
    """One Ray actor: a Session kept warm across cases (the class is wrapped by ``ray.remote`` at run time).

    The driver calls ``setup`` after every (re)start of the actor, so a restarted worker gets its templates again
    without Ray keeping constructor arguments alive."""

    def setup(self, template_set, options, fingerprint, overwrite, heads=None) -> str:
        import functools

        from MedFoundationSegLib.workflow.case import run_case
        from MedFoundationSegLib.workflow.session import Session

        self.process = functools.partial(run_case, Session(), template_set, options=options, heads=heads)
        self.fingerprint, self.overwrite = fingerprint, overwrite
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        return self.name

    def run(self, query, case_dir: str) -> dict:
        outcome = run_one_case(query, Path(case_dir), self.process, overwrite=self.overwrite,
                            fingerprint=self.fingerprint, progress=None, cancelled=None)
        return {"outcome": dataclasses.asdict(outcome), "worker": self.name}


def run_batch_ray(queries: list, out_dir: str | os.PathLike, template_set, options, *, cluster: ClusterOptions,
                  overwrite: bool = False, fingerprint: str | None = None, heads: dict | None = None,
                  progress=None) -> list[CaseOutcome]:
    """Run every query on the cluster into ``out_dir/<case>/``; one outcome per case, as ``run_batch`` returns."""
    out_dir = Path(out_dir)
    names = case_names(queries)
    outcomes: dict[str, CaseOutcome] = {}
    records: dict[str, dict] = {}
    pending: list[_Attempt] = []
    for query, name in zip(queries, names):
        if case_outputs.case_state(out_dir / name, fingerprint) == "finished" and not overwrite:
            outcomes[name] = CaseOutcome(name, str(query), "skipped")
        else:
            pending.append(_Attempt(query, name))
    pending.sort(key=lambda item: -voxel_count(item.query))  # largest first: no long case starts last
    started = time.time()
    ray, started_here = _connect(cluster.address)
    out_dir.mkdir(parents=True, exist_ok=True)
    scheduler = _Scheduler(ray, out_dir, pending, outcomes, records, cluster, progress, started)
    previous_handler = _catch_ctrl_c(scheduler)
    try:
        if pending:
            scheduler.start_workers(template_set, options, fingerprint, overwrite, heads)
            scheduler.run()
    except KeyboardInterrupt:  # Ctrl-C: what ran is recorded, cases in flight are cancelled, then the interrupt goes on
        for attempt in scheduler.in_flight.values():
            scheduler.record(attempt, CaseOutcome(attempt.name, str(attempt.query), "cancelled",
                                                  time.perf_counter() - attempt.started))
        _finish(out_dir, queries, names, outcomes, records, cluster, started)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        scheduler.stop_workers()
        if started_here:
            ray.shutdown()
    ordered = _finish(out_dir, queries, names, outcomes, records, cluster, started)
    report(progress, 1.0, "batch done")
    return ordered


def _catch_ctrl_c(scheduler: _Scheduler):
    """Ctrl-C sets a flag the scheduling loop reads every second, so it stops the run wherever it lands (Ray's own
    calls may absorb the interrupt); returns the handler to restore, None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        scheduler.interrupted = True

    return signal.signal(signal.SIGINT, stop)


def _connect(address: str):
    """``ray`` connected to the cluster asked for; True when this run started it (and so stops it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local":
        # A private cluster: Ray's servers listen beyond the loopback interface, so this one takes a token. Ray reads
        # these variables when it is imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
            import secrets

            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'medfoundationseg[ray]'") from None
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return ray, True
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BatchError(f"cannot reach the Ray cluster at {address!r}: {' '.join(str(error).split())[:200]}") from None
    return ray, False


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT that does not answer is named now; Ray itself retries for many minutes before giving up."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto" and ray:// addresses are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise BatchError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


class _Scheduler:
    """Hands cases to idle workers, collects results, requeues cases of dead workers and shows progress."""

    def __init__(self, ray, out_dir, pending, outcomes, records, cluster, progress, started):
        self.ray, self.out_dir, self.pending, self.outcomes, self.records = ray, out_dir, pending, outcomes, records
        self.cluster, self.progress, self.started = cluster, progress, started
        self.in_flight: dict = {}  # ObjectRef -> _Attempt (with .worker set to the actor's index)
        self.workers: dict[int, object] = {}  # index -> actor handle
        self.names: dict[int, str] = {}  # index -> "host:pid" (the latest incarnation)
        self.idle: list[int] = []
        self.waking: dict = {}  # ObjectRef of setup() -> index (a new or restarted worker)
        self.setup_arguments: tuple = ()
        self.last_error = ""
        self.total = len(pending) + len(outcomes)
        self.interrupted = False  # set by Ctrl-C

    def start_workers(self, template_set, options, fingerprint, overwrite, heads=None) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        per_worker = max(1, self.cluster.cpus_per_worker)
        count = self.cluster.workers or (gpus if gpus else max(1, cpus // per_worker))
        count = max(1, min(count, len(self.pending)))
        actor = ray.remote(CaseWorker).options(num_cpus=per_worker if not gpus else 1, num_gpus=1 if gpus else 0,
                                               max_restarts=max(self.cluster.retries, 1))
        self.setup_arguments = (ray.put(template_set), options, fingerprint, overwrite, heads)
        for index in range(count):
            self.workers[index] = actor.remote()
            self._wake(index)
        log.info("Ray: %d worker(s) of %s on a cluster with %d CPU, %d GPU", count,
                 "1 GPU" if gpus else f"{per_worker} CPU", cpus, gpus)

    def run(self) -> None:
        ray = self.ray
        while self.pending or self.in_flight:
            if self.interrupted:
                raise KeyboardInterrupt
            while self.idle and self.pending:
                index, attempt = self.idle.pop(0), self.pending.pop(0)
                attempt.attempts += 1
                attempt.started, attempt.worker = time.perf_counter(), index
                self.in_flight[self.workers[index].run.remote(attempt.query, str(self.out_dir / attempt.name))] = attempt
            if not self.workers:
                for attempt in self.pending:
                    self.record(attempt, CaseOutcome(attempt.name, str(attempt.query), "failed",
                                                      error=f"no Ray worker left: {self.last_error}"), "")
                self.pending.clear()
                break
            ready, _ = ray.wait(list(self.in_flight) + list(self.waking), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.waking:
                    self._woken(ref)
                else:
                    self._collected(ref)
            self._show()

    def _wake(self, index: int) -> None:
        self.waking[self.workers[index].setup.remote(*self.setup_arguments)] = index

    def _woken(self, ref) -> None:
        index = self.waking.pop(ref)
        try:
            self.names[index] = self.ray.get(ref)
            self.idle.append(index)
        except self.ray.exceptions.RayError as error:  # cannot start (missing weights, no memory): drop it
            self.last_error = _one_line(error)
            log.error("Ray worker %d cannot start: %s", index, self.last_error)
            self.workers.pop(index, None)

    def _collected(self, ref) -> None:
        attempt = self.in_flight.pop(ref)
        index = attempt.worker
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:  # the worker died mid-case: retry it elsewhere
            self.last_error = _one_line(error)
            worker = self.names.get(index, f"worker {index}")
            if attempt.attempts <= self.cluster.retries:
                log.warning("case %s: worker %s died (attempt %d of %d); retrying", attempt.name, worker,
                            attempt.attempts, self.cluster.retries + 1)
                self.pending.insert(0, attempt)
            else:
                self.record(attempt, CaseOutcome(
                    attempt.name, str(attempt.query), "failed", time.perf_counter() - attempt.started,
                    error=f"its worker died {attempt.attempts} times; last: {self.last_error}"), worker)
            self._wake(index)  # Ray restarts it; it takes cases again once set up
            return
        except self.ray.exceptions.RayError as error:  # the case could not be handed over or back: record it
            self.idle.append(index)
            self.record(attempt, CaseOutcome(attempt.name, str(attempt.query), "failed",
                                              time.perf_counter() - attempt.started, error=_one_line(error)), "")
            return
        outcome = CaseOutcome(**result["outcome"])
        self.names[index] = result["worker"]
        self.idle.append(index)
        self.record(attempt, outcome, result["worker"])
        log.info("case %s: %s on %s (attempt %d, %.1f s)", attempt.name, outcome.status, result["worker"],
                 attempt.attempts, outcome.seconds)

    def record(self, attempt: _Attempt, outcome: CaseOutcome, worker: str | None = None) -> None:
        """The case's outcome, and for run_report.json its worker (by default the one it was handed to) and attempts."""
        self.outcomes[attempt.name] = outcome
        worker = self.names.get(attempt.worker, "") if worker is None else worker
        self.records[attempt.name] = {"worker": worker, "attempts": attempt.attempts,
                                      "wall_s": round(time.perf_counter() - attempt.started, 2)}

    def _show(self) -> None:
        done = sum(o.status in ("ok", "skipped") for o in self.outcomes.values())
        failed = sum(o.status == "failed" for o in self.outcomes.values())
        hours = max(time.time() - self.started, 1e-6) / 3600
        rate = sum(o.status == "ok" for o in self.outcomes.values()) / hours
        report(self.progress, (done + failed) / max(self.total, 1),
               f"{done} done, {failed} failed, {len(self.in_flight)} running, {rate:.0f} cases/h")

    def stop_workers(self) -> None:
        for actor in self.workers.values():
            self.ray.kill(actor)


def _finish(out_dir: Path, queries, names, outcomes, records, cluster: ClusterOptions, started: float):
    """summary.csv (merged with an earlier run's) and run_report.json; returns the outcomes in query order."""
    ordered = [outcomes[name] for name in names if name in outcomes]
    write_summary(out_dir / SUMMARY_NAME, ordered)
    path = out_dir / RUN_REPORT_NAME
    cases = {}
    if path.exists():  # a resumed run keeps what earlier runs recorded for the cases it skipped
        try:
            cases = json.loads(path.read_text(encoding="utf-8")).get("cases", {})
        except (OSError, ValueError):
            cases = {}
    for outcome in ordered:
        if outcome.status == "skipped" and outcome.case in cases:
            continue
        cases[outcome.case] = {"status": outcome.status, "seconds": round(outcome.seconds, 2),
                               **records.get(outcome.case, {"worker": "", "attempts": 0}),
                               **({"error": outcome.error} if outcome.error else {})}
    wall_s = time.time() - started
    ran = sum(o.status == "ok" for o in ordered)
    run_report = {"runner": "ray", "address": cluster.address, "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                                          time.localtime(started)),
                  "wall_s": round(wall_s, 2), "cases_per_hour": round(3600 * ran / wall_s, 1) if ran else 0.0,
                  "counts": {status: sum(o.status == status for o in ordered)
                             for status in ("ok", "skipped", "failed", "cancelled")},
                  "cases": dict(sorted(cases.items()))}
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(run_report, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return ordered


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")
