"""Batch annotation of many volumes: localize, segment, refine and write outputs per case, then a summary CSV.

Resumable: a case whose ``report.json`` says ``"status": "ok"`` is skipped. Isolated: one failing case is recorded
(its error in the summary and in ``<case>/error.txt``) and the others go on; the caller turns failures into a
non-zero exit status. Shared by the ``medfoundationseg batch`` command and the Slicer CLI module.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from MedFoundationSegLib.core.progress import Cancelled, check, report, scaled
from MedFoundationSegLib.core.volume_files import case_name
from MedFoundationSegLib.io import case_outputs

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
REPORT_NAME = case_outputs.REPORT_NAME


class BatchError(ValueError):
    pass


@dataclasses.dataclass
class CaseOutcome:
    case: str
    query: str
    status: str  # "ok" | "skipped" | "failed" | "cancelled"
    seconds: float = 0.0
    structures_found: int = 0
    structures_absent: int = 0
    structures_partial: int = 0  # found but cut by the field of view (segmented inside it)
    error: str = ""


ProcessCase = Callable[..., dict]  # (query_path, case_dir, progress=, cancelled=) -> report dict


def run_batch(queries: list[Path], out_dir: str | os.PathLike, process_case: ProcessCase, *, overwrite: bool = False,
              fingerprint: str | None = None, progress=None, cancelled=None) -> list[CaseOutcome]:
    """Run ``process_case`` on every query into ``out_dir/<case>/``; returns one outcome per case (summary CSV too).

    A case finished with the same ``fingerprint`` (inputs and options) is skipped; one finished with another is
    redone only with ``overwrite`` (else it fails with a message saying so); an interrupted one is redone."""
    out_dir = Path(out_dir)
    names = case_names(queries)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[CaseOutcome] = []
    try:
        for index, (query, name) in enumerate(zip(queries, names)):
            report(progress, index / len(queries), f"case {index + 1}/{len(queries)}: {name}")
            outcomes.append(CaseOutcome(name, str(query), "cancelled"))  # until the case says otherwise
            outcomes[-1] = run_one_case(query, out_dir / name, process_case, overwrite=overwrite,
                                     fingerprint=fingerprint, cancelled=cancelled,
                                     progress=scaled(progress, index / len(queries), (index + 1) / len(queries)))
            if outcomes[-1].status == "cancelled":
                break
    except KeyboardInterrupt:  # Ctrl-C: the summary of what ran is written, then the interrupt goes on
        write_summary(out_dir / SUMMARY_NAME, outcomes)
        raise
    write_summary(out_dir / SUMMARY_NAME, outcomes)
    report(progress, 1.0, "batch done")
    return outcomes


def case_names(queries: list) -> list[str]:
    """One output folder name per query; refused before anything is written when two queries would share one."""
    names = [case_name(q) for q in queries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise BatchError(f"several queries share the case name(s) {sorted(duplicates)}; rename them")
    return names


def run_one_case(query: Path, case_dir: Path, process_case: ProcessCase, *, overwrite: bool, fingerprint: str | None,
              progress, cancelled) -> CaseOutcome:
    """One case: skipped when finished with the same fingerprint, refused when stale, else run with failures
    recorded (the traceback beside the case, one line in the outcome)."""
    name = case_dir.name
    state = case_outputs.case_state(case_dir, fingerprint)
    if state == "finished" and not overwrite:
        return CaseOutcome(name, str(query), "skipped")
    if state == "stale" and not overwrite:
        return CaseOutcome(name, str(query), "failed", error=f"{case_dir} was made from other templates or options; "
                           "pass --overwrite to redo it")
    start = time.perf_counter()
    try:
        check(cancelled, "batch")
        (case_dir / case_outputs.ERROR_NAME).unlink(missing_ok=True)
        result = process_case(query, case_dir, overwrite=overwrite or state == "incomplete", progress=progress,
                              cancelled=cancelled)
    except Cancelled:
        return CaseOutcome(name, str(query), "cancelled", time.perf_counter() - start)
    except Exception as error:  # isolate: record and go on with the next case
        log.error("case %s failed: %s", name, error)
        _write_error(case_dir, traceback.format_exc())
        return CaseOutcome(name, str(query), "failed", time.perf_counter() - start,
                           error=f"{type(error).__name__}: {error}")
    structures = result.get("structures", {}).values()
    return CaseOutcome(name, str(query), "ok", time.perf_counter() - start,
                       sum(1 for s in structures if s.get("present", True)),
                       sum(1 for s in structures if not s.get("present", True)),
                       sum(1 for s in structures if s.get("partial", False)))


def _write_error(case_dir: Path, text: str) -> None:
    """The traceback beside a failed case, for whoever debugs it; where the case folder cannot hold it (it is a
    file, or unwritable), the summary's one line is all there is."""
    try:
        case_dir.mkdir(parents=True, exist_ok=True)
        (case_dir / case_outputs.ERROR_NAME).write_text(text, encoding="utf-8")
    except OSError as error:
        log.warning("could not write %s: %s", case_dir / case_outputs.ERROR_NAME, error)


def write_summary(path: Path, outcomes: list[CaseOutcome]) -> None:
    """Merge with an earlier summary so a resumed run keeps the rows of cases it skipped."""
    rows: dict[str, dict] = {}
    if path.exists():
        with open(path, newline="", encoding="utf-8") as stream:
            rows = {row["case"]: row for row in csv.DictReader(stream)}
    for outcome in outcomes:
        if outcome.status == "skipped" and outcome.case in rows:
            continue
        rows[outcome.case] = {k: (f"{v:.2f}" if isinstance(v, float) else v)
                              for k, v in dataclasses.asdict(outcome).items()}
    fields = [f.name for f in dataclasses.fields(CaseOutcome)]
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[name] for name in sorted(rows))
    os.replace(tmp, path)
