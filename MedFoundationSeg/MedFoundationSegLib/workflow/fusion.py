"""Several answers for one box as one (planes, models), and the box a segment's clicks are corrected in."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.segment.graphcut import mask_box_kji
from MedFoundationSegLib.segment.model_fusion import fuse_by_agreement
from MedFoundationSegLib.workflow.results import CaseResult


def fuse_planes(parts: list[CaseResult]) -> CaseResult:
    """Axial, coronal and sagittal results of one box as one: the mean of their probabilities, foreground above 0.5."""
    probability = np.mean([part.probability_kji for part in parts], axis=0).astype(np.float32)
    first = parts[0].report
    return CaseResult(probability > 0.5, probability, {
        "mode": first["mode"], "model": first["model"], "axis": "fused", "fusion": "planes",
        "planes": {part.report["axis"]: {k: part.report[k] for k in ("slices", "padding_mm", "slices_encoded")}
                   for part in parts}})


def fuse_models(volume: Volume, parts: list[CaseResult], box_ijk) -> CaseResult:
    """Two models' results of one box as one: kept where they agree, a graph cut decides where they disagree."""
    mask, probability = fuse_by_agreement(volume.array, [part.probability_kji for part in parts],
                                          geometry.box_kji(box_ijk), spacing_mm=volume.spacing_mm)
    first = parts[0].report
    disagree = parts[0].mask_kji ^ parts[1].mask_kji
    union = parts[0].mask_kji | parts[1].mask_kji
    return CaseResult(mask, probability, dict(first, model="+".join(part.report["model"] for part in parts),
                                              fusion="models",
                                              disagreement=round(float(disagree.sum()) / max(int(union.sum()), 1), 3),
                                              models={part.report["model"]: part.report for part in parts}))


def segment_box_ijk(volume: Volume, mask_kji: np.ndarray, clicks_kji, margin_fraction: float = 0.1,
                    margin_vox: int = 3, slice_axis: int | None = None) -> np.ndarray:
    """The box a segment's clicks are corrected in: the mask's bounding box grown to hold its include clicks, plus
    ``margin_fraction`` of each side (at least ``margin_vox``), clipped to the volume; inclusive ijk. No margin along
    ``slice_axis`` (a kji axis: the model's slice direction): there the structure head predicts every slice of the
    box, and a margin let it add slices beyond the segment, which grew the next Refine's box again (encoding more)."""
    points = [np.array(ends) for ends in zip(*mask_box_kji(mask_kji))]
    points += [np.asarray(point) for point, positive in clicks_kji if positive]
    lo_kji, hi_kji = np.min(points, axis=0), np.max(points, axis=0)
    margin = np.maximum(np.round((hi_kji - lo_kji + 1) * margin_fraction), margin_vox).astype(int)
    if slice_axis is not None:
        margin[slice_axis] = 0
    upper = np.array(volume.shape_kji) - 1
    lo_kji, hi_kji = np.clip(lo_kji - margin, 0, upper), np.clip(hi_kji + margin, 0, upper)
    return np.array([lo_kji[::-1], hi_kji[::-1]])
