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
        keys = ("mode", "model", "slices", "stop_reasons", "seconds", "refine", "voxels", "evidence")
        return {k: self.report[k] for k in keys if k in self.report}
