"""Re-propagation after the user corrected one slice: only the slices beyond it, away from the seeds, are redone with
the walk of ``propagate`` (same stop rules); the inner part of the structure is kept as it was."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, report, show_slice
from MedFoundationSegLib.segment.propagate import (
    PropagationError,
    PropagationResult,
    SliceSegmenter,
    StopRules,
    _appearance,
    _walk,
)


def repropagate_from_edit(segmenter: SliceSegmenter, result: PropagationResult, edited_slice: int,
                          edited_mask: np.ndarray, *, progress: ProgressCallback | None = None,
                          cancelled: CancelCheck | None = None, **kwargs) -> PropagationResult:
    """Accept a corrected slice and redo only the slices beyond it, away from the seeds (the inner part is kept)."""
    mask = result.mask.copy()
    k = int(edited_slice)
    edited_mask = np.asarray(edited_mask, bool)
    if edited_mask.shape != mask.shape[1:]:
        raise PropagationError(f"edited mask shape {edited_mask.shape} does not match slices {mask.shape[1:]}")
    seeds = result.seeds or [k]
    directions = []
    if k >= max(seeds):
        directions.append(+1)
    if k <= min(seeds):
        directions.append(-1)
    if not directions:  # between seeds: redo up to the nearest seeds on both sides
        directions = [+1, -1]
    ious = dict(result.iou)
    segmented = [s for s in result.segmented]
    mask[k] = edited_mask
    show_slice(k, edited_mask)
    ious[k] = 1.0
    rules = kwargs.pop("rules", None) or StopRules.preset("seeds")
    image = kwargs.pop("image", None)
    stats = _appearance(image, mask.shape, {k: edited_mask})
    limits = kwargs.pop("limits", None)
    low, high = (0, mask.shape[0] - 1) if limits is None else (limits[0] - rules.range_tolerance_slices,
                                                               limits[1] + rules.range_tolerance_slices)
    reasons = dict(result.stop_reasons)
    for n, step in enumerate(directions):
        report(progress, n / len(directions), f"re-propagating {'up' if step > 0 else 'down'} from slice {k}")
        beyond = np.arange(k + step, mask.shape[0] if step > 0 else -1, step)
        blocked = {s for s in seeds if s != k}
        stop_at = next((s for s in beyond if s in blocked), None)
        clear = beyond if stop_at is None else beyond[: list(beyond).index(stop_at)]
        mask[clear] = False
        segmented = [s for s in segmented if s not in set(clear.tolist())]
        for s in clear:
            ious.pop(int(s), None)
        reason = _walk(segmenter, mask, ious, segmented, k, step, high if step > 0 else low, rules,
                       kwargs.get("margin_px", 5.0), kwargs.get("use_point", False), stats, image, blocked, cancelled)
        if stop_at is None:
            reasons["up" if step > 0 else "down"] = reason
    report(progress, 1.0, "re-propagation done")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(set(segmented) | {k}), stop_reasons=reasons,
                             seeds=sorted(set(seeds) | {k}))
