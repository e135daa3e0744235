"""Slice-by-slice 3D segmentation with a 2D promptable segmenter (SAM family), independent of the model.

Why: a box prompt asserts "an object is here", so a 2D model answers on every slice it is asked about. The logic that
decides which slices to ask, with which prompt, and when to stop lives here, written against a tiny protocol so it can
be tested with stand-in segmenters. Modes:

- ``box_per_slice``: MedLSAM style, one 2D box per slice from a 3D box (or from its SPL slabs), padded in mm.
- ``propagate_from_seeds``: user mask/box on one or more slices; each next prompt comes from the previous mask (box +
  margin; a positive point at the mask's deepest pixel is optional); explicit stop rules (``stop_rules.yaml``); the
  reason each side stopped is kept.
- ``repropagate_from_edit``: after a slice is corrected, only the slices beyond it (away from the seeds) are redone.
- ``every_kth``: segment every k-th slice by propagation, fill the others by contour interpolation.
- ``reference_litemedsam``: the CVPR-24 LiteMedSAM 3D baseline (middle slice, previous box + 3 px at 256, no stop).

Slices are taken along axis 0 of (z, y, x) arrays; 2D boxes are (x0, y0, x1, y1) inclusive pixel coordinates.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from .progress import CancelCheck, ProgressCallback, check, report


class PropagationError(ValueError):
    """Propagation inputs are unusable."""


class SliceSegmenter(Protocol):
    def segment(self, slice_index: int, box_xyxy, points_xy=None, point_labels=None,
                mask_prompt=None) -> tuple[np.ndarray, float]:
        """Bool (H, W) mask on slice ``slice_index`` and the model's predicted IoU.

        The SAM-family implementation is ``segmenter.PredictorSegmenter``."""


@dataclasses.dataclass
class StopRules:
    """When a walk from slice to slice stops; the meaning of each field is in ``stop_rules.yaml``, which also holds
    the preset of each mode (:meth:`preset`). The defaults here are the ``box_guided`` preset."""

    min_area_px: int = 12
    min_area_fraction: float = 0.05
    min_iou: float = 0.5
    max_iou_drop: float | None = None
    max_area_ratio: float = 1.8
    regrowth_below_fraction: float | None = None
    regrowth_ratio: float = 1.2
    max_centroid_shift: float = 0.5
    appearance_sigmas: float = 2.5
    range_tolerance_slices: int = 2

    @classmethod
    def preset(cls, name: str) -> "StopRules":
        """The rules of one mode (``box_guided``, ``seeds``) as stored in ``stop_rules.yaml``."""
        presets = _stop_rule_presets()
        if name not in presets:
            raise PropagationError(f"unknown stop-rule preset {name!r}; choose from {sorted(presets)}")
        return cls(**presets[name])


@functools.lru_cache(maxsize=1)
def _stop_rule_presets() -> dict:
    import yaml

    with open(Path(__file__).with_name("stop_rules.yaml"), encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@dataclasses.dataclass
class PropagationResult:
    mask: np.ndarray  # bool (z, y, x)
    iou: dict[int, float]  # slice -> predicted IoU of the kept masks
    segmented: list[int]  # slices the model was run on and kept
    stop_reasons: dict[str, str]  # "up" (increasing index) / "down" -> why that side stopped
    seeds: list[int] = dataclasses.field(default_factory=list)
    interpolated: list[int] = dataclasses.field(default_factory=list)


# --- small helpers ---------------------------------------------------------------------------------------------------

def mask_box_xyxy(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    if not mask2d.any():
        return None
    rows, cols = np.flatnonzero(mask2d.any(axis=1)), np.flatnonzero(mask2d.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _grow_box(box, margin_px: float, shape_hw) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    m = int(round(margin_px))
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, shape_hw[1] - 1), min(y1 + m, shape_hw[0] - 1)


def _intersect_boxes(a, b) -> tuple[int, int, int, int] | None:
    """Overlap of two (x0, y0, x1, y1) boxes, or None when it is thinner than 2 px (a prompt needs x1 > x0)."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _deepest_point_xy(mask2d: np.ndarray) -> tuple[float, float]:
    depth = ndimage.distance_transform_edt(np.pad(mask2d, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(col), float(row)


def _check_volume_shape(shape) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise PropagationError(f"volume shape must be (z, y, x); got {shape}")
    return tuple(int(n) for n in shape)


# --- mode 1: MedLSAM box per slice ------------------------------------------------------------------------------------

def box_per_slice(segmenter: SliceSegmenter, shape_kji, box_kji, *, spacing_mm=(1.0, 1.0, 1.0), pad_mm: float = 4.0,
                  slabs: list[tuple[int, int, tuple[int, int, int, int]]] | None = None,
                  progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> PropagationResult:
    """Every slice k0..k1 gets a 2D box: the 3D box's (or its SPL slab's) rectangle padded by ``pad_mm``.

    ``slabs``: [(k_first, k_last, (x0, y0, x1, y1)), ...] sub-boxes; slices they cover use their rectangle.
    """
    shape = _check_volume_shape(shape_kji)
    (k0, k1), (j0, j1), (i0, i1) = box_kji
    if not (0 <= k0 <= k1 < shape[0]):
        raise PropagationError(f"box slice range {k0}..{k1} outside 0..{shape[0] - 1}")
    pad_px = pad_mm / float(min(spacing_mm[0], spacing_mm[1]))
    rect = {k: (i0, j0, i1, j1) for k in range(k0, k1 + 1)}
    for first, last, slab_box in slabs or []:
        for k in range(max(first, k0), min(last, k1) + 1):
            rect[k] = tuple(int(v) for v in slab_box)
    mask = np.zeros(shape, bool)
    ious = {}
    for n, k in enumerate(sorted(rect)):
        check(cancelled, "box-per-slice segmentation")
        box = _grow_box(rect[k], pad_px, shape[1:])
        m, iou = segmenter.segment(k, box)
        mask[k] = np.asarray(m, bool)
        ious[k] = float(iou)
        report(progress, (n + 1) / len(rect), f"slice {k}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(rect),
                             stop_reasons={"up": "end of the box", "down": "end of the box"})


def box_guided(segmenter: SliceSegmenter, shape_kji, box_kji, *, spacing_mm=(1.0, 1.0), pad_mm: float = 4.0,
               slabs: list[tuple[int, int, tuple[int, int, int, int]]] | None = None, rules: StopRules | None = None,
               margin_px: float = 5.0, margin_fraction: float = 0.1, use_point: bool = False,
               progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> PropagationResult:
    """The 3D box as prior and hard limit rather than every slice's prompt.

    Why: near its ends an organ covers a sliver of the box's rectangle and a box prompt makes SAM fill it (a "shelf"
    of false voxels above the liver dome); the shelf grows slice by slice, so checking a box mask against its
    neighbour does not catch it. Here only the middle slice gets the rectangle (or its SPL slab's); each further slice
    is prompted with the previous mask's box plus a margin, never larger than the rectangle, and each side stops at
    the box's end slice or earlier by the stop rules (an organ that ended inside a loose box). The margin is
    ``max(margin_px, margin_fraction * the previous box's larger side)``. No positive point by default: on the
    phantoms the deepest-point click made LiteMedSAM alternate between the whole liver and a part of it.
    """
    shape = _check_volume_shape(shape_kji)
    rules = rules or StopRules.preset("box_guided")
    (k0, k1), (j0, j1), (i0, i1) = box_kji
    if not (0 <= k0 <= k1 < shape[0]):
        raise PropagationError(f"box slice range {k0}..{k1} outside 0..{shape[0] - 1}")
    pad_px = pad_mm / float(min(spacing_mm[0], spacing_mm[1]))
    rect = _grow_box((i0, j0, i1, j1), pad_px, shape[1:])
    middle = (k0 + k1) // 2
    seed_rect = rect
    for first, last, slab_box in slabs or []:
        if first <= middle <= last:
            seed_rect = _grow_box(tuple(int(v) for v in slab_box), pad_px, shape[1:])
    check(cancelled, "box-guided segmentation")
    m, iou = segmenter.segment(middle, seed_rect)
    m = np.asarray(m, bool)
    if int(m.sum()) < rules.min_area_px:  # nothing to follow: fall back to one prompt per slice
        result = box_per_slice(segmenter, shape, box_kji, spacing_mm=spacing_mm, pad_mm=pad_mm, slabs=slabs,
                               progress=progress, cancelled=cancelled)
        result.stop_reasons = {side: f"no object on the middle slice {middle}; box on every slice"
                               for side in ("up", "down")}
        return result
    mask = np.zeros(shape, bool)
    mask[middle] = m
    ious, segmented = {middle: float(iou)}, [middle]
    reasons = {}
    for side, step, limit in (("up", +1, k1), ("down", -1, k0)):
        reasons[side] = _walk(segmenter, mask, ious, segmented, middle, step, limit, rules, margin_px, use_point,
                              None, None, set(), cancelled, cap_box=rect, margin_fraction=margin_fraction)
        report(progress, len(segmented) / (k1 - k0 + 1), f"{side} side: {reasons[side]}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(segmented), stop_reasons=reasons, seeds=[middle])


# --- mode 2: propagation from seed slices -------------------------------------------------------------------------------

def _stop_reason(m: np.ndarray, iou: float, prev: np.ndarray, max_area: int, rules: StopRules, stats,
                 image_slice, typical_iou: float | None = None) -> str | None:
    area = int(m.sum())
    if area < rules.min_area_px:
        return f"empty or tiny mask ({area} px)"
    prev_area = int(prev.sum())
    if area < rules.min_area_fraction * max_area and area < prev_area:
        return f"mask shrank to {area} px (< {rules.min_area_fraction:.0%} of the largest, {max_area} px)"
    if iou < rules.min_iou:
        return f"low predicted IoU {iou:.2f} < {rules.min_iou}"
    if rules.max_iou_drop is not None and typical_iou is not None and iou < typical_iou - rules.max_iou_drop:
        # Beyond a structure's end the previous mask's box still asks "what is here?" and the model answers with
        # a neighbour, less confidently than inside the structure (e.g. a slab above the liver dome).
        return f"predicted IoU fell to {iou:.2f} (median {typical_iou:.2f} on this structure)"
    if prev_area and area / prev_area > rules.max_area_ratio:
        return f"area jumped x{area / prev_area:.2f} (> {rules.max_area_ratio}), likely a leak"
    if (rules.regrowth_below_fraction is not None and prev_area < rules.regrowth_below_fraction * max_area
            and area > rules.regrowth_ratio * prev_area):
        # An organ tapers towards its end; a mask that had shrunk and grows again is a neighbour taking over.
        return (f"mask grew again x{area / prev_area:.2f} after shrinking to {prev_area} px "
                f"(< {rules.regrowth_below_fraction:.0%} of the largest, {max_area} px)")
    box = mask_box_xyxy(prev)
    if box is not None:
        size = max(box[2] - box[0], box[3] - box[1]) + 1
        shift = np.hypot(*(np.array(ndimage.center_of_mass(m)) - np.array(ndimage.center_of_mass(prev))))
        if shift > rules.max_centroid_shift * size:
            return f"centroid jumped {shift:.1f} px (> {rules.max_centroid_shift:.0%} of {size} px)"
    if stats is not None and image_slice is not None:
        mean, std = stats
        value = float(image_slice[m].mean())
        if abs(value - mean) > rules.appearance_sigmas * std:
            return f"intensity {value:.0f} unlike the seed ({mean:.0f} +- {std:.0f})"
    return None


def _walk(segmenter, mask, ious, segmented, start: int, step: int, limit: int, rules: StopRules, margin_px,
          use_point: bool, stats, image, blocked: set[int], cancelled, cap_box=None,
          margin_fraction: float = 0.1) -> str:
    """Propagate from slice ``start`` (already filled in ``mask``) in direction ``step``; returns why it stopped.

    ``cap_box``: (x0, y0, x1, y1) no prompt may exceed (the 3D box's rectangle when there is one)."""
    prev = mask[start]
    max_area = int(prev.sum())
    walk_ious: list[float] = []  # the model's IoUs on this walk (not the start: it may be a user's mask)
    k = start + step
    while True:
        check(cancelled, "propagation")
        if k < 0 or k >= mask.shape[0]:
            return f"volume edge reached after slice {k - step}"
        if (step > 0 and k > limit) or (step < 0 and k < limit):
            return f"left the localized range at slice {k}"
        if k in blocked:
            return f"met the annotated slice {k}"
        box = mask_box_xyxy(prev)
        side = max(box[2] - box[0], box[3] - box[1]) + 1
        prompt = _grow_box(box, max(margin_px, margin_fraction * side), mask.shape[1:])
        if cap_box is not None:
            prompt = _intersect_boxes(prompt, cap_box) or prompt
        points = labels = None
        if use_point:
            points, labels = [_deepest_point_xy(prev)], [1]
        m, iou = segmenter.segment(k, prompt, points, labels, None)
        m = np.asarray(m, bool)
        typical = float(np.median(walk_ious)) if len(walk_ious) >= 3 else None
        reason = _stop_reason(m, float(iou), prev, max_area, rules, stats, None if image is None else image[k],
                              typical)
        if reason is not None:
            return f"{reason} at slice {k}"
        mask[k] = m
        ious[k] = float(iou)
        walk_ious.append(float(iou))
        segmented.append(k)
        max_area = max(max_area, int(m.sum()))
        prev = m
        k += step


def _seed_masks(segmenter, shape, seeds) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Seeds may be masks (used as given) or (x0, y0, x1, y1) boxes (segmented first)."""
    masks, ious = {}, {}
    for k, seed in seeds.items():
        k = int(k)
        if not 0 <= k < shape[0]:
            raise PropagationError(f"seed slice {k} outside 0..{shape[0] - 1}")
        seed = np.asarray(seed)
        if seed.shape == tuple(shape[1:]):
            masks[k], ious[k] = seed.astype(bool), 1.0
        elif seed.shape == (4,):
            m, iou = segmenter.segment(k, tuple(int(v) for v in seed))
            masks[k], ious[k] = np.asarray(m, bool), float(iou)
        else:
            raise PropagationError(f"seed on slice {k} must be a (H, W) mask or an (x0, y0, x1, y1) box; got shape "
                                   f"{seed.shape}")
        if not masks[k].any():
            raise PropagationError(f"seed on slice {k} is empty; draw or prompt the structure there")
    return masks, ious


def propagate_from_seeds(segmenter: SliceSegmenter, shape_kji, seeds: dict, *, limits: tuple[int, int] | None = None,
                         rules: StopRules | None = None, margin_px: float = 5.0, use_point: bool = False,
                         image: np.ndarray | None = None, progress: ProgressCallback | None = None,
                         cancelled: CancelCheck | None = None) -> PropagationResult:
    """Propagate from user seeds (slice -> mask or box) both ways, with stop rules (the ``seeds`` preset by default).

    No positive point by default: on 10 phantom queries the deepest-point click lowered the mean Dice from 0.820 to
    0.741 (LiteMedSAM then follows a part of the organ, or jumps to a neighbour).

    ``limits``: the localized slice range (e.g. MedLAM's z-range); propagation may exceed it by
    ``rules.range_tolerance_slices``. ``image``: enables the appearance stop rule.
    """
    shape = _check_volume_shape(shape_kji)
    rules = rules or StopRules.preset("seeds")
    if not seeds:
        raise PropagationError("propagation needs at least one seed slice")
    seed_masks, ious = _seed_masks(segmenter, shape, seeds)
    mask = np.zeros(shape, bool)
    for k, m in seed_masks.items():
        mask[k] = m
    stats = None
    if image is not None:
        if np.shape(image) != shape:
            raise PropagationError(f"image shape {np.shape(image)} does not match {shape}")
        values = np.concatenate([image[k][m] for k, m in seed_masks.items()]).astype(float)
        stats = (float(values.mean()), max(float(values.std()), 1.0))
    low, high = (0, shape[0] - 1) if limits is None else (limits[0] - rules.range_tolerance_slices,
                                                          limits[1] + rules.range_tolerance_slices)
    order = sorted(seed_masks)
    segmented = list(order)
    reasons = {}
    # Between two seeds each walks toward the other and stops when it meets an annotated slice.
    for n, k in enumerate(order):
        blocked = (set(order) | set(segmented)) - {k}  # never overwrite another seed's walk
        report(progress, n / (2 * len(order)), f"propagating from slice {k}")
        up = _walk(segmenter, mask, ious, segmented, k, +1, high, rules, margin_px, use_point, stats, image,
                   blocked, cancelled)
        down = _walk(segmenter, mask, ious, segmented, k, -1, low, rules, margin_px, use_point, stats, image,
                     blocked, cancelled)
        if k == order[-1]:
            reasons["up"] = up
        if k == order[0]:
            reasons["down"] = down
    report(progress, 1.0, "propagation done")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(set(segmented)), stop_reasons=reasons,
                             seeds=order)


def repropagate_from_edit(segmenter: SliceSegmenter, result: PropagationResult, edited_slice: int,
                          edited_mask: np.ndarray, **kwargs) -> PropagationResult:
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
    ious[k] = 1.0
    rules = kwargs.pop("rules", None) or StopRules.preset("seeds")
    image = kwargs.pop("image", None)
    stats = None
    if image is not None:
        values = image[k][edited_mask].astype(float)
        stats = (float(values.mean()), max(float(values.std()), 1.0))
    limits = kwargs.pop("limits", None)
    low, high = (0, mask.shape[0] - 1) if limits is None else (limits[0] - rules.range_tolerance_slices,
                                                               limits[1] + rules.range_tolerance_slices)
    reasons = dict(result.stop_reasons)
    for step in directions:
        beyond = np.arange(k + step, mask.shape[0] if step > 0 else -1, step)
        blocked = {s for s in seeds if s != k}
        stop_at = next((s for s in beyond if s in blocked), None)
        clear = beyond if stop_at is None else beyond[: list(beyond).index(stop_at)]
        mask[clear] = False
        segmented = [s for s in segmented if s not in set(clear.tolist())]
        for s in clear:
            ious.pop(int(s), None)
        reason = _walk(segmenter, mask, ious, segmented, k, step, high if step > 0 else low, rules,
                       kwargs.get("margin_px", 5.0), kwargs.get("use_point", False), stats, image, blocked, None)
        if stop_at is None:
            reasons["up" if step > 0 else "down"] = reason
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(set(segmented) | {k}), stop_reasons=reasons,
                             seeds=sorted(set(seeds) | {k}))


# --- mode 3: every k-th slice + interpolation ----------------------------------------------------------------------------

def auto_step(n_slices: int, slice_mm: float, target_mm: float = 7.5) -> int:
    """Slices to skip between model calls: about ``target_mm`` apart, at least 3 key slices over the structure."""
    step = max(1, int(round(target_mm / float(slice_mm))))
    return int(max(1, min(step, max(n_slices // 3, 1))))


def every_kth(segmenter: SliceSegmenter, shape_kji, seeds: dict, *, step: int | str = "auto",
              slice_mm: float = 1.0, limits=None, rules: StopRules | None = None, image=None,
              margin_px: float = 5.0) -> PropagationResult:
    """Propagate over every ``step``-th slice (the prompt comes from the last computed slice), interpolate the rest.

    Sub-sampling is done by giving the segmenter a strided view of the volume, so the stop rules apply as usual.
    """
    from .interpolation import interpolate_slices

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
                                  image=None if image is None else np.asarray(image)[grid])
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
    from .interpolation import interpolate_slices

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


# --- mode 4: the peer's reference procedure --------------------------------------------------------------------------------

def reference_litemedsam(segmenter: SliceSegmenter, shape_kji, box_xyzxyz, *, progress=None,
                         cancelled: CancelCheck | None = None) -> PropagationResult:
    """LiteMedSAM CVPR-24 3D baseline: middle slice with the box's rectangle; upward to z1 then downward to z0; each
    prompt is the previous mask's box grown by 3 px in the 256 frame (or the original rectangle after an empty mask).
    No stop rule, no post-processing: kept as the baseline to compare against."""
    shape = _check_volume_shape(shape_kji)
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box_xyzxyz)
    if not (0 <= z0 <= z1 < shape[0]):
        raise PropagationError(f"box z range {z0}..{z1} outside 0..{shape[0] - 1}")
    rect = (x0, y0, x1, y1)
    pad_px = 3.0 * max(shape[1], shape[2]) / 256.0
    mask = np.zeros(shape, bool)
    ious = {}
    middle = (z0 + z1) // 2
    order = list(range(middle, z1 + 1)) + list(range(middle - 1, z0 - 1, -1))
    prev_box = None
    for n, k in enumerate(order):
        check(cancelled, "reference propagation")
        if k == middle - 1:
            prev_box = mask_box_xyxy(mask[middle])
        box = rect if (k == middle or prev_box is None) else _grow_box(prev_box, pad_px, shape[1:])
        m, iou = segmenter.segment(k, box)
        mask[k], ious[k] = np.asarray(m, bool), float(iou)
        prev_box = mask_box_xyxy(mask[k])
        report(progress, (n + 1) / len(order), f"slice {k}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(order),
                             stop_reasons={"up": f"box end z1={z1}", "down": f"box end z0={z0}"}, seeds=[middle])


# --- several structures ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class OverlapReport:
    labels: np.ndarray  # uint8/uint16 label map
    overlaps: dict[tuple[str, str], int]  # (winner, loser) -> voxels given to the winner


def resolve_overlaps(masks: dict[str, np.ndarray], label_values: dict[str, int], *, policy: str = "order",
                     scores: dict[str, np.ndarray | float] | None = None) -> OverlapReport:
    """Merge per-structure masks into one label map, resolving every overlap explicitly and reporting it.

    ``policy="order"``: earlier names in ``masks`` win. ``policy="score"``: the higher score wins per voxel; a score
    is a probability map (same shape) or one number per structure (e.g. mean predicted IoU).
    """
    if policy not in ("order", "score"):
        raise PropagationError(f"policy must be 'order' or 'score'; got {policy!r}")
    names = list(masks)
    if not names:
        raise PropagationError("no structures to merge")
    shape = np.shape(masks[names[0]])
    missing = [n for n in names if n not in label_values]
    if missing:
        raise PropagationError(f"no label value for {missing}")
    if policy == "score" and (scores is None or any(n not in scores for n in names)):
        raise PropagationError("policy 'score' needs a score for every structure")
    dtype = np.uint8 if max(label_values[n] for n in names) < 256 else np.uint16
    labels = np.zeros(shape, dtype)
    best = np.full(shape, -np.inf, np.float32)
    owner = np.full(shape, -1, np.int32)
    overlaps: dict[tuple[str, str], int] = {}
    for index, name in enumerate(names):
        m = np.asarray(masks[name], bool)
        if m.shape != shape:
            raise PropagationError(f"mask {name!r} has shape {m.shape}; expected {shape}")
        if policy == "order":
            score = np.full(shape, -index, np.float32)
        else:
            s = scores[name]
            score = np.broadcast_to(np.asarray(s, np.float32), shape)
        contested = m & (owner >= 0)
        wins = m & (score > best)
        for other_index in np.unique(owner[contested]):
            other = names[other_index]
            here = contested & (owner == other_index)
            won = int((here & wins).sum())
            lost = int(here.sum()) - won
            if won:
                overlaps[(name, other)] = overlaps.get((name, other), 0) + won
            if lost:
                overlaps[(other, name)] = overlaps.get((other, name), 0) + lost
        labels[wins] = label_values[name]
        best[wins] = score[wins]
        owner[wins] = index
    return OverlapReport(labels=labels, overlaps=overlaps)
