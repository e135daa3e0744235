"""Sparse slice-by-slice segmentation: the model runs on every k-th slice, contour interpolation fills the rest.

Why: the encoder is the cost (one pass per slice) and organs change slowly across a few millimetres, so the model
runs on about a third of the slices and ITK's morphological contour interpolation fills the others.
"""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback
from MedFoundationSegLib.segment.interpolation import interpolate_slices
from MedFoundationSegLib.segment.propagate import (
    PropagationError,
    PropagationResult,
    SliceSegmenter,
    StopRules,
    _check_volume_shape,
    box_guided,
    propagate_from_seeds,
)


def auto_step(n_slices: int, slice_mm: float, target_mm: float = 7.5) -> int:
    """Slices to skip between model calls: about ``target_mm`` apart, at least 3 key slices over the structure."""
    step = max(1, int(round(target_mm / float(slice_mm))))
    return int(max(1, min(step, max(n_slices // 3, 1))))


def every_kth(segmenter: SliceSegmenter, shape_kji, seeds: dict, *, step: int | str = "auto",
              slice_mm: float = 1.0, limits=None, rules: StopRules | None = None, image=None,
              margin_px: float = 5.0, progress: ProgressCallback | None = None,
              cancelled: CancelCheck | None = None) -> PropagationResult:
    """Propagate over every ``step``-th slice (the prompt comes from the last computed slice), interpolate the rest.

    Sub-sampling is done by giving the segmenter a strided view of the volume, so the stop rules apply as usual.
    """
    shape = _check_volume_shape(shape_kji)
    if step == "auto":
        span = shape[0] if limits is None else limits[1] - limits[0] + 1
        step = auto_step(span, slice_mm)
    step = int(step)
    if step < 1:
        raise PropagationError(f"step must be >= 1 or 'auto'; got {step}")
    anchor = min(int(k) for k in seeds)
    grid = [k for k in range(anchor % step, shape[0], step)]
    seeds_on_grid = {grid.index(int(k)) if int(k) in grid else None: v for k, v in seeds.items()}
    if None in seeds_on_grid:
        raise PropagationError(f"with step {step}, seed slices must be {step} apart from {anchor}; got {sorted(seeds)}")

    class Strided:
        def segment(self, index, box, points=None, labels=None, mask_prompt=None):
            return segmenter.segment(grid[index], box, points, labels, mask_prompt)

    coarse_limits = None
    if limits is not None:
        coarse_limits = (int(np.searchsorted(grid, limits[0])), int(np.searchsorted(grid, limits[1], "right") - 1))
    coarse = propagate_from_seeds(Strided(), (len(grid),) + shape[1:], seeds_on_grid, limits=coarse_limits,
                                  rules=rules, margin_px=margin_px,
                                  image=None if image is None else np.asarray(image)[grid], progress=progress,
                                  cancelled=cancelled)
    mask = np.zeros(shape, bool)
    keys = [grid[i] for i in coarse.segmented]
    for i in coarse.segmented:
        mask[grid[i]] = coarse.mask[i]
    filled = interpolate_slices(mask, keys) if len(keys) > 1 else mask
    return PropagationResult(mask=filled, iou={grid[i]: v for i, v in coarse.iou.items()}, segmented=keys,
                             stop_reasons=coarse.stop_reasons, seeds=[grid[i] for i in coarse.seeds],
                             interpolated=[k for k in range(keys[0], keys[-1] + 1) if k not in keys] if keys else [])


def box_grid(k0: int, k1: int, step: int) -> list[int]:
    """Every ``step``-th slice of k0..k1, both end slices included (the box's ends are where the organ ends)."""
    if step < 1:
        raise PropagationError(f"step must be >= 1; got {step}")
    grid = list(range(int(k0), int(k1) + 1, int(step)))
    return grid if grid[-1] == k1 else grid + [int(k1)]


def box_every_kth(segmenter: SliceSegmenter, shape_kji, box_kji, *, step: int, spacing_mm=(1.0, 1.0),
                  pad_mm: float = 4.0, slabs=None, progress: ProgressCallback | None = None,
                  cancelled: CancelCheck | None = None, **guided) -> PropagationResult:
    """``box_guided`` on every ``step``-th slice of the box, contour interpolation in between.

    Why: the encoder is the cost (one pass per slice); organs change slowly across a few millimetres, so the model
    runs on about a third of the slices and ITK's morphological contour interpolation fills the rest."""
    shape = _check_volume_shape(shape_kji)
    (k0, k1), rows, cols = box_kji
    if not (0 <= k0 <= k1 < shape[0]):
        raise PropagationError(f"box slice range {k0}..{k1} outside 0..{shape[0] - 1}")
    grid = box_grid(k0, k1, step)

    class Strided:
        def segment(self, index, box, points=None, labels=None, mask_prompt=None):
            return segmenter.segment(grid[index], box, points, labels, mask_prompt)

    coarse_slabs = []
    for first, last, slab_box in slabs or []:
        inside = [n for n, k in enumerate(grid) if first <= k <= last]
        if inside:
            coarse_slabs.append((inside[0], inside[-1], slab_box))
    coarse = box_guided(Strided(), (len(grid),) + shape[1:], ((0, len(grid) - 1), rows, cols),
                        spacing_mm=spacing_mm, pad_mm=pad_mm, slabs=coarse_slabs, progress=progress,
                        cancelled=cancelled, **guided)
    keys = [grid[n] for n in coarse.segmented]
    mask = np.zeros(shape, bool)
    for n in coarse.segmented:
        mask[grid[n]] = coarse.mask[n]
    filled = interpolate_slices(mask, keys) if len(keys) > 1 else mask
    return PropagationResult(mask=filled, iou={grid[n]: v for n, v in coarse.iou.items()}, segmented=keys,
                             stop_reasons=coarse.stop_reasons, seeds=[grid[n] for n in coarse.seeds],
                             interpolated=[k for k in range(keys[0], keys[-1] + 1) if k not in keys])
