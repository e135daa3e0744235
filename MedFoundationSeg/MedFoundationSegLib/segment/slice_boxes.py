"""Boxes on one slice, as the SAM family's box prompt takes them: (x0, y0, x1, y1) inclusive pixels.

Why one module: propagation, corrective clicks and decoder adaptation all prompt a slice with a neighbour's mask's
box grown by the same margin; written once here, the slices a click spreads to and the prompts the adapted decoder
layers learned from stay the ones propagation uses.
"""

from __future__ import annotations

import numpy as np

# The margin a walk grows a neighbour's mask box by: max(MARGIN_PX, MARGIN_FRACTION of the box's larger side).
MARGIN_PX = 5.0
MARGIN_FRACTION = 0.1


def mask_box_xyxy(mask_hw: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box of a slice's mask, or None when it is empty."""
    if not mask_hw.any():
        return None
    rows, cols = np.flatnonzero(mask_hw.any(axis=1)), np.flatnonzero(mask_hw.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def grow_box(box, margin_px: float, shape_hw) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin_px`` (rounded) on every side, within a slice of ``shape_hw``."""
    x0, y0, x1, y1 = box
    m = int(round(margin_px))
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, shape_hw[1] - 1), min(y1 + m, shape_hw[0] - 1)


def intersect_boxes(a, b) -> tuple[int, int, int, int] | None:
    """Overlap of two boxes, or None when it is thinner than 2 px (a prompt needs x1 > x0)."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def walk_prompt_xyxy(box, shape_hw, margin_px: float = MARGIN_PX,
                     margin_fraction: float = MARGIN_FRACTION) -> tuple[int, int, int, int]:
    """The prompt a walk gives the next slice from ``box`` (the last mask's): ``box`` plus max(``margin_px``,
    ``margin_fraction`` of its larger side in pixels), within the slice."""
    side = max(box[2] - box[0], box[3] - box[1]) + 1
    return grow_box(box, max(margin_px, margin_fraction * side), shape_hw)
