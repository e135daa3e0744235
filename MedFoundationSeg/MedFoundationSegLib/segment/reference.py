"""The peer's LiteMedSAM 3D inference procedure, kept as the baseline to compare against."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core.progress import CancelCheck, check, report
from MedFoundationSegLib.segment.propagate import (
    PropagationError,
    PropagationResult,
    SliceSegmenter,
    _check_volume_shape,
)
from MedFoundationSegLib.segment.slice_boxes import grow_box, mask_box_xyxy


def reference_litemedsam(segmenter: SliceSegmenter, shape_kji, box_xyzxyz, *, progress=None,
                         cancelled: CancelCheck | None = None) -> PropagationResult:
    """LiteMedSAM CVPR-24 3D baseline: middle slice with the box's rectangle; upward to z1 then downward to z0; each
    prompt is the previous mask's box grown by 3 px in the 256 frame (or the original rectangle after an empty mask).
    With a model segmenter that box is computed as the official script does (the mask resized with OpenCV
    INTER_AREA, boxed in the input frame); other segmenters get the same rule in the slice frame.
    No stop rule, no post-processing: kept as the baseline to compare against."""
    shape = _check_volume_shape(shape_kji)
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box_xyzxyz)
    if not (0 <= z0 <= z1 < shape[0]):
        raise PropagationError(f"box z range {z0}..{z1} outside 0..{shape[0] - 1}")
    rect = (x0, y0, x1, y1)
    official = getattr(segmenter, "official_box_from_mask", None)
    pad_px = 3.0 * max(shape[1], shape[2]) / 256.0
    mask = np.zeros(shape, bool)
    ious = {}
    middle = (z0 + z1) // 2
    order = list(range(middle, z1 + 1)) + list(range(middle - 1, z0 - 1, -1))
    for n, k in enumerate(order):
        check(cancelled, "reference propagation")
        previous = None if k == middle else mask[k - 1] if k > middle else mask[k + 1]
        if previous is not None and official is not None and (box := official(previous)) is not None:
            m, iou = segmenter.segment(k, box, box_frame="input")
        else:
            prev_box = None if previous is None else mask_box_xyxy(previous)
            box = rect if prev_box is None else grow_box(prev_box, pad_px, shape[1:])
            m, iou = segmenter.segment(k, box)
        mask[k], ious[k] = np.asarray(m, bool), float(iou)
        report(progress, (n + 1) / len(order), f"slice {k}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(order),
                             stop_reasons={"up": f"box end z1={z1}", "down": f"box end z0={z0}"}, seeds=[middle])
