"""A result refined with the user's annotations (box, extreme points, clicks, scribbles) by a graph cut, geodesic or
GrowCut: the one place where the Session's actions turn their options into ``segment.refine`` parameters."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.segment import refine
from MedFoundationSegLib.segment.graphcut import agree_with_mask, box_margin_without
from MedFoundationSegLib.workflow.results import CaseResult


def refine_result(volume: Volume, result: CaseResult, *, method: str, box_ijk=None, extreme_points_ijk=None,
                  positive_ijk=None, negative_ijk=None, scribble_kji=None, click_reach_mm: float | None = None,
                  exclude_reach_mm: float | None = None, exclude_pull_axis: int | None = None,
                  smoothness: float | None = None, probability_shift: float = 0.0, hold_mask: bool = False,
                  exact_slices_axis: int | None = None,
                  progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> CaseResult:
    """``result`` refined with the annotations given. With a ``probability_shift`` (the first cut of a model's
    segmentation, ``segment.graphcut.cut_probability_shift``) the probability handed on agrees with the cut's mask
    (``agree_with_mask``), so later cuts, which take the probability as it is, start from what this one decided;
    with ``hold_mask`` (a later cut as smooth as this one: after clicks on thick slices) at least ``agree_with_mask``'s
    ``sure`` level inside the mask.
    ``exact_slices_axis``: the (z, y, x) axis along which the box's slices are the structure's; the cut keeps to them."""
    probability = result.probability_kji if result.probability_kji is not None else \
        result.mask_kji.astype(np.float32)
    clicks, positive = [], []
    for points, is_positive in ((positive_ijk, True), (negative_ijk, False)):
        for point in (np.zeros((0, 3)) if points is None else np.atleast_2d(points)):
            clicks.append(np.round(point[::-1]).astype(int))
            positive.append(is_positive)
    annotations = refine.Annotations(
        box_kji=None if box_ijk is None else geometry.box_kji(box_ijk),
        extreme_points_kji=None if extreme_points_ijk is None else np.round(
            np.asarray(extreme_points_ijk)[:, ::-1]).astype(int),
        clicks_kji=np.array(clicks) if clicks else None,
        click_positive=np.array(positive) if clicks else None,
        fg_scribble=scribble_kji)
    tuned = {} if click_reach_mm is None else {"click_influence_mm": float(click_reach_mm)}
    tuned.update({} if smoothness is None else {"smoothness": float(smoothness)})
    if exact_slices_axis is not None:
        tuned["box_margin_vox"] = box_margin_without(exact_slices_axis)
    params = refine.GraphCutParams(exclude_pull_axis=exclude_pull_axis, exclude_influence_mm=exclude_reach_mm,
                                   probability_shift=probability_shift, **tuned)
    refined = refine.refine(volume.array, probability, annotations, method=method,
                            spacing_mm=volume.spacing_mm, params=params, progress=progress, cancelled=cancelled)
    mask = np.asarray(refined.mask, bool)
    probability = agree_with_mask(probability, mask, hold_inside=hold_mask) if probability_shift else probability
    return CaseResult(mask, probability, dict(result.report, refine=method, raw_voxels=int(result.mask_kji.sum())),
                      head=result.head)
