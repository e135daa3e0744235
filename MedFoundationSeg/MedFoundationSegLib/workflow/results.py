"""What an action returns: a structure's mask with its evidence and report (no torch: the Slicer side reads it)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class CaseResult:
    """A structure's (or a case's) mask and what produced it."""

    mask_kji: np.ndarray
    probability_kji: np.ndarray | None = None
    report: dict = dataclasses.field(default_factory=dict)
    head: dict | None = None  # the structure head learned from this result, as plain arrays (StructureHead.to_arrays)

    def report_summary(self) -> dict:
        """The part of the report worth storing in a segment tag (no per-voxel data)."""
        keys = ("mode", "model", "slices", "stop_reasons", "appearance", "seconds", "refine", "voxels", "evidence")
        return {k: self.report[k] for k in keys if k in self.report}


def report_lines(report: dict) -> list[str]:
    """What a result's report tells the user, one line each: why each propagation or correction walk stopped where
    it did, the intensity the walks compared answers with, a correction's clicked slices where the model's answer was
    not taken, and a one-line summary."""
    lines = _reason_lines(report.get("stop_reasons"))
    if report.get("appearance"):
        lines.append(f"answers unlike {report['appearance']} were refused")
    correction = report.get("correction") or {}
    lines += [f"click correction, {line}" for line in _reason_lines(correction.get("stop_reasons"))]
    summary = ", ".join(f"{key} {report[key]}" for key in ("mode", "model", "slices", "seconds", "voxels")
                        if key in report)
    if correction:
        summary += f"{', ' if summary else ''}{correction.get('clicks', 0)} clicks"
        if correction.get("click_model"):
            summary += f" (clicked slices asked of {correction['click_model']})"
    return lines + ([summary] if summary else [])


def _reason_lines(reasons) -> list[str]:
    if isinstance(reasons, dict):
        return [f"{where}: {why}" for where, why in reasons.items()]
    if isinstance(reasons, (list, tuple)):
        return [str(reason) for reason in reasons]
    return [str(reasons)] if reasons else []
