"""Simulated user for interactive correction (the CVPR-2025 challenge rule, in 3D).

Each click goes to the centre of the largest 26-connected error component — the voxel farthest (in mm) from the
component's border — and is positive where the error is a miss (truth there, prediction not) and negative where it is
a false positive. NoC@t = number of clicks until Dice >= t (0 if the starting mask already reaches it); a case that
never reaches t within the budget counts as the budget (10). Dice, not IoU, is the threshold measure.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from seg_metrics import dice


def next_click(pred: np.ndarray, truth: np.ndarray, spacing_kji_mm=(1.0, 1.0, 1.0)):
    """((k, j, i), positive) for the next click, or None when the prediction is perfect."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    error = pred ^ truth
    if not error.any():
        return None
    components, count = ndimage.label(error, structure=np.ones((3, 3, 3), bool))
    sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
    largest = components == (int(np.argmax(sizes)) + 1)
    where = np.argwhere(largest)
    lo, hi = where.min(0), where.max(0) + 1
    crop = np.pad(largest[tuple(slice(a, b) for a, b in zip(lo, hi))], 1)  # border counts as outside
    depth = ndimage.distance_transform_edt(crop, sampling=spacing_kji_mm)
    point = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) - 1 + lo
    return tuple(int(v) for v in point), bool(truth[tuple(point)])


def noc(dices: list[float], threshold: float, budget: int = 10) -> int:
    """Clicks needed to reach ``threshold``; ``dices[0]`` is before any click. Failure counts as ``budget``."""
    for clicks, value in enumerate(dices[:budget + 1]):
        if value >= threshold:
            return clicks
    return budget


def click_session(refine, start_mask: np.ndarray, truth: np.ndarray, spacing_kji_mm, budget: int = 10
                  ) -> tuple[list[float], list[tuple]]:
    """Run up to ``budget`` clicks; ``refine(positive_kji, negative_kji) -> mask`` re-solves with all clicks so far.
    Returns Dice before and after each click (padded with the last value if the mask becomes perfect) and the clicks."""
    mask = np.asarray(start_mask, bool)
    dices, clicks = [dice(mask, truth)], []
    for _ in range(budget):
        click = next_click(mask, truth, spacing_kji_mm)
        if click is None:
            dices.append(dices[-1])
            continue
        clicks.append(click)
        positive = [c for c, p in clicks if p]
        negative = [c for c, p in clicks if not p]
        mask = np.asarray(refine(np.array(positive).reshape(-1, 3), np.array(negative).reshape(-1, 3)), bool)
        dices.append(dice(mask, truth))
    return dices, clicks
