"""Slicer-style "fill between slices" as an engine action: no model, only the drawn slices."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report
from MedFoundationSegLib.segment.interpolation import interpolate_slices
from MedFoundationSegLib.workflow.results import CaseResult


def fill_between_slices(mask_kji: np.ndarray, *, axis: str = "axial", progress: ProgressCallback | None = None,
                        cancelled: CancelCheck | None = None) -> CaseResult:
    """Slicer-style "fill between slices": morphological contour interpolation between the annotated slices."""
    check(cancelled, "interpolation")
    mask_kji = np.asarray(mask_kji, bool)
    array_axis = geometry.slice_frame(axis).array_axis
    annotated = np.flatnonzero(geometry.to_slices(mask_kji, axis).any(axis=(1, 2)))
    if len(annotated) < 2:
        raise ValueError("fill between slices needs the structure drawn on at least two slices")
    filled = interpolate_slices(mask_kji, [int(k) for k in annotated], axis=array_axis)
    report(progress, 1.0, "interpolation done")
    return CaseResult(filled, None, {"mode": "fill between slices", "annotated": annotated.tolist(),
                                     "voxels": int(filled.sum())})
