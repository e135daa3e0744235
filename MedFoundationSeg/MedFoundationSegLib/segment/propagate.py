"""Slice-by-slice 3D segmentation with a 2D promptable segmenter (SAM family), independent of the model.

Why: a box prompt asserts "an object is here", so a 2D model answers on every slice it is asked about. The logic that
decides which slices to ask, with which prompt, and when to stop lives here, written against a tiny protocol so it can
be tested with stand-in segmenters. Modes:

- ``box_per_slice``: MedLSAM style, one 2D box per slice from a 3D box (or from its SPL slabs), padded in mm.
- ``propagate_from_seeds``: user mask/box on one or more slices; each next prompt comes from the previous mask (box +
  margin; a positive point at the mask's deepest pixel is optional); explicit stop rules (``stop_rules.yaml``); the
  reason each side stopped is kept.
- ``repropagate.repropagate_from_edit`` (its own module): after a slice is corrected, only the slices beyond it
  (away from the seeds) are redone, with this module's walk.

Sparser modes live in ``keyslices`` (every k-th slice + interpolation) and ``reference`` (the peer's procedure).

Slices are taken along axis 0 of (z, y, x) arrays; 2D boxes are (x0, y0, x1, y1) inclusive pixel coordinates.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report, show_slice
from MedFoundationSegLib.segment import appearance
from MedFoundationSegLib.segment.slice_boxes import (
    MARGIN_FRACTION,
    MARGIN_PX,
    grow_box,
    intersect_boxes,
    mask_box_xyxy,
    walk_prompt_xyxy,
)
from MedFoundationSegLib.segment.stop_rules import PropagationError, StopRules, stop_reason


class SliceSegmenter(Protocol):
    def segment(self, slice_index: int, box_xyxy, points_xy=None, point_labels=None,
                mask_prompt=None) -> tuple[np.ndarray, float]:
        """Bool (H, W) mask on slice ``slice_index`` and the model's predicted IoU.

        The SAM-family implementation is ``segmenter.PredictorSegmenter``."""


class MiddleAskedOf:
    """A slice segmenter whose answer fitting a drawn box on its middle slice (``segment_fitting_box``) comes from
    ``click_segmenter``; every other prompt goes to ``segmenter``, whose ``probabilities`` keep both models' answers.

    Why: where the box is the structure's own, MobileSAM answers what LiteMedSAM (trained on boxes around whole
    structures) takes for the tissue beside a thin one: on the CT phantoms' pancreas the middle slice's Dice was 0.88
    against 0.63, and LiteMedSAM's walk starting there gave first Dice 0.798 instead of 0.755 (docs/benchmarks.md)."""

    def __init__(self, segmenter, click_segmenter):
        self.segmenter, self.click_segmenter = segmenter, click_segmenter
        self.probabilities = segmenter.probabilities

    def segment(self, slice_index: int, box_xyxy=None, points_xy=None, point_labels=None, mask_prompt=None):
        return self.segmenter.segment(slice_index, box_xyxy, points_xy, point_labels, mask_prompt)

    def segment_fitting_box(self, slice_index: int, box_xyxy, tight_xyxy) -> tuple[np.ndarray, float]:
        mask, iou = self.click_segmenter.segment_fitting_box(slice_index, box_xyxy, tight_xyxy)
        self.probabilities[int(slice_index)] = self.click_segmenter.probabilities[int(slice_index)]
        return mask, iou


@dataclasses.dataclass
class PropagationResult:
    mask: np.ndarray  # bool (z, y, x)
    iou: dict[int, float]  # slice -> predicted IoU of the kept masks
    segmented: list[int]  # slices the model was run on and kept
    stop_reasons: dict[str, str]  # "up" (increasing index) / "down" -> why that side stopped
    seeds: list[int] = dataclasses.field(default_factory=list)
    interpolated: list[int] = dataclasses.field(default_factory=list)
    appearance: str | None = None  # what the appearance rule compared answers with; None without the image


# --- small helpers ---------------------------------------------------------------------------------------------------

def _deepest_point_xy(mask2d: np.ndarray) -> tuple[float, float]:
    depth = ndimage.distance_transform_edt(np.pad(mask2d, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(col), float(row)


def _appearance(image, shape, masks: dict[int, np.ndarray]) -> tuple[float, float] | None:
    """Mean and spread (at least 1) of ``image`` under the given slices' masks: what the appearance rule compares
    each answer with; None without an image."""
    if image is None:
        return None
    if np.shape(image) != tuple(shape):
        raise PropagationError(f"image shape {np.shape(image)} does not match {tuple(shape)}")
    return appearance.of_pixels(np.concatenate([np.asarray(image[k])[m] for k, m in masks.items()]))


def _middle_reference(image, shape, middle: int, m: np.ndarray, learned_appearance, rules: StopRules):
    """The appearance rule's reference of a walk from the middle slice's answer ``m``, and its description: taught by
    earlier volumes where ``learned_appearance`` holds one (``appearance.learned_reference``), else the answer's."""
    stats, source = _appearance(image, shape, {middle: m}), "the middle slice's answer"
    if learned_appearance is not None and stats is not None:
        taught = appearance.learned_reference(image[middle], m, learned_appearance, rules.appearance_sigmas,
                                              rules.min_area_px)
        stats, source = (taught, "its pixels like the structure in an earlier volume") if taught else (stats, source)
    return stats, _described(stats, source)


def _described(stats, source: str) -> str | None:
    """The report's words for the appearance rule's reference (mean, spread) taken from ``source``."""
    return None if stats is None else f"{stats[0]:.0f} +- {stats[1]:.0f}, from {source}"


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
        box = grow_box(rect[k], pad_px, shape[1:])
        m, iou = segmenter.segment(k, box)
        mask[k] = np.asarray(m, bool)
        show_slice(k, mask[k])
        ious[k] = float(iou)
        report(progress, (n + 1) / len(rect), f"slice {k}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(rect),
                             stop_reasons={"up": "end of the box", "down": "end of the box"})


def box_guided(segmenter: SliceSegmenter, shape_kji, box_kji, *, spacing_mm=(1.0, 1.0), pad_mm: float = 4.0,
               slabs: list[tuple[int, int, tuple[int, int, int, int]]] | None = None, rules: StopRules | None = None,
               margin_px: float = MARGIN_PX, margin_fraction: float = MARGIN_FRACTION, use_point: bool = False,
               exact_limits: bool = False, image: np.ndarray | None = None, learned_appearance=None,
               progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> PropagationResult:
    """The 3D box as prior and hard limit rather than every slice's prompt.

    Why: near its ends an organ covers a sliver of the box's rectangle and a box prompt makes SAM fill it (a "shelf"
    of false voxels above the liver dome); the shelf grows slice by slice, so checking a box mask against its
    neighbour does not catch it. Here only the middle slice gets the rectangle (or its SPL slab's); each further slice
    is prompted with the previous mask's box plus a margin, never larger than the rectangle, and each side stops at
    the box's end slice or earlier by the stop rules (an organ that ended inside a loose box). The margin is
    ``max(margin_px, margin_fraction * the previous box's larger side)``. No positive point by default: on the
    phantoms the deepest-point click made LiteMedSAM alternate between the whole liver and a part of it.
    ``exact_limits``: the box is the structure's (a box the user drew): no walk stops before its first and last
    slices, and on the middle slice a mask that fits the box is asked for (``segment_fitting_box``, when the segmenter
    offers it). ``image`` (the slices): an answer unlike the middle slice's mask (``appearance_sigmas``) is a stop, as
    with seeds: above a liver's dome the model fills its prompt with lung; within ``exact_limits`` the model is asked
    again and what is kept must look like the structure (``_answer_inside``). ``learned_appearance``: the structure's
    (mean, spread) rows of earlier volumes, for a drawn box's reference (``appearance.learned_reference``).
    """
    shape = _check_volume_shape(shape_kji)
    rules = rules or StopRules.preset("box_guided")
    (k0, k1), (j0, j1), (i0, i1) = box_kji
    if not (0 <= k0 <= k1 < shape[0]):
        raise PropagationError(f"box slice range {k0}..{k1} outside 0..{shape[0] - 1}")
    pad_px = pad_mm / float(min(spacing_mm[0], spacing_mm[1]))
    rect = grow_box((i0, j0, i1, j1), pad_px, shape[1:])
    middle = (k0 + k1) // 2
    tight = (i0, j0, i1, j1)
    for first, last, slab_box in slabs or []:
        if first <= middle <= last:
            tight = tuple(int(v) for v in slab_box)
    seed_rect = grow_box(tight, pad_px, shape[1:])
    check(cancelled, "box-guided segmentation")
    # a drawn box is tight on its middle slice: the structure reaches its four sides there
    fitting = getattr(segmenter, "segment_fitting_box", None) if exact_limits else None
    m, iou = fitting(middle, seed_rect, tight) if fitting else segmenter.segment(middle, seed_rect)
    m = np.asarray(m, bool)
    if int(m.sum()) < rules.min_area_px:  # nothing to follow: fall back to one prompt per slice
        result = box_per_slice(segmenter, shape, box_kji, spacing_mm=spacing_mm, pad_mm=pad_mm, slabs=slabs,
                               progress=progress, cancelled=cancelled)
        result.stop_reasons = {side: f"no object on the middle slice {middle}; box on every slice"
                               for side in ("up", "down")}
        return result
    stats, described = _middle_reference(image, shape, middle, m, learned_appearance if exact_limits else None, rules)
    mask = np.zeros(shape, bool)
    mask[middle] = m
    show_slice(middle, m)
    ious, segmented = {middle: float(iou)}, [middle]
    reasons = {}
    for side, step, limit in (("up", +1, k1), ("down", -1, k0)):
        reasons[side] = _walk(segmenter, mask, ious, segmented, middle, step, limit, rules, margin_px, use_point,
                              stats, image, set(), cancelled, cap_box=rect, margin_fraction=margin_fraction,
                              present=(k0, k1) if exact_limits else None)
        report(progress, len(segmented) / (k1 - k0 + 1), f"{side} side: {reasons[side]}")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(segmented), stop_reasons=reasons, seeds=[middle],
                             appearance=described)


# --- mode 2: propagation from seed slices -------------------------------------------------------------------------------

NEAR_PREVIOUS_PX = 2  # how far beyond the previous slice's mask a last-resort answer may reach


def _answer_inside(segmenter, k: int, prev: np.ndarray, answer: np.ndarray, prompt, check_answer,
                   min_area_px: int, like_hw: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Slice ``k`` lies where the structure is known to be, but the model's ``answer`` failed the stop rules: ask
    again with the previous mask's own box, then with its deepest point as an include click, then (where the answer
    holds pixels unlike the structure: a neighbour the model prefers, such as a ventricle beside the caudate) with an
    include click on the previous mask's like pixels and an exclude click on the answer's unlike ones. When every
    answer still fails, the first answer is kept where it lies near the previous mask (a leak is cut off, a tapering
    end keeps its size); when too little of it is left, the previous mask carries over (a thin structure moves little
    from one slice to the next); such a last resort returns an IoU of 0. ``like_hw``: the slice's pixels whose
    intensity is like the structure's (``appearance.like``); then only those are kept, of the answer and else of the
    previous mask (all of it where too few are like). Why: a walk in a drawn box cannot end, and where a thin
    structure leaves the box the model answers with the tissue beside it (fat, around a pancreas), which the next
    slices would follow to the box's end."""
    tries = [(mask_box_xyxy(prev), None, None), (prompt, [_deepest_point_xy(prev)], [1])]
    if like_hw is not None and (prev & like_hw).any() and (answer & ~like_hw).any():
        tries.append((prompt, [_deepest_point_xy(prev & like_hw), _deepest_point_xy(answer & ~like_hw)], [1, 0]))
    for box, points, labels in tries:
        m, iou = segmenter.segment(k, box, points, labels, None)
        m = np.asarray(m, bool)
        if check_answer(m, float(iou)) is None:
            return m, float(iou)
    like_hw = np.ones_like(prev) if like_hw is None else like_hw
    kept = answer & ndimage.binary_dilation(prev, iterations=NEAR_PREVIOUS_PX) & like_hw
    if int(kept.sum()) < min_area_px:
        kept = prev & like_hw
    if int(kept.sum()) < min_area_px:  # the next slice's prompts are boxes of this mask: never a sliver
        kept = prev.copy()
    probabilities = getattr(segmenter, "probabilities", None)
    if probabilities is not None:  # the refinement's evidence there: the kept mask, held moderately; the model's
        # background where it is surer
        probabilities[k] = np.where(kept, 0.7, np.minimum(0.3, probabilities.get(k, 0.3))).astype(np.float32)
    return kept, 0.0


def _walk(segmenter, mask, ious, segmented, start: int, step: int, limit: int, rules: StopRules, margin_px,
          use_point: bool, stats, image, blocked: set[int], cancelled, cap_box=None,
          margin_fraction: float = MARGIN_FRACTION, present: tuple[int, int] | None = None) -> str:
    """Propagate from slice ``start`` (already filled in ``mask``) in direction ``step``; returns why it stopped.

    ``cap_box``: (x0, y0, x1, y1) no prompt may exceed (the 3D box's rectangle when there is one). ``present``: the
    slices (first, last) the structure is known to cross (the z-range of a box the user drew): there a stop rule
    does not end the walk, it makes the model try again (``_answer_inside``). An answer that fails the rules against
    a last resort's mask passes where it meets them against the last mask the model gave: a last resort may keep a
    sliver, and the structure's next answers would all be leaks beside it."""
    prev = anchor = mask[start]  # anchor: the last mask the model gave, not a last resort's (``_answer_inside``)
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
        prompt = walk_prompt_xyxy(mask_box_xyxy(prev), mask.shape[1:], margin_px, margin_fraction)
        if cap_box is not None:
            prompt = intersect_boxes(prompt, cap_box) or prompt
        points = labels = None
        if use_point:
            points, labels = [_deepest_point_xy(prev)], [1]
        m, iou = segmenter.segment(k, prompt, points, labels, None)
        m = np.asarray(m, bool)
        typical = float(np.median(walk_ious)) if len(walk_ious) >= 3 else None
        def check_answer(answer, answer_iou, prev=prev, anchor=anchor, image_slice=None if image is None else image[k],
                         typical=typical):
            reason = stop_reason(answer, answer_iou, prev, max_area, rules, stats, image_slice, typical)
            if reason is None or anchor is prev:
                return reason
            return reason if stop_reason(answer, answer_iou, anchor, max_area, rules, stats, image_slice,
                                         typical) else None

        reason = check_answer(m, float(iou))
        if reason is not None:
            if present is None or not present[0] <= k <= present[1]:
                return f"{reason} at slice {k}"
            like_hw = None if stats is None or image is None else appearance.like(image[k], stats,
                                                                                  rules.appearance_sigmas)
            m, iou = _answer_inside(segmenter, k, prev, m, prompt, check_answer, rules.min_area_px, like_hw)
        if iou > 0.0:  # the model's answer, not a last resort's
            anchor = m
        mask[k] = m
        show_slice(k, m)
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
                         exact_limits: bool = False, rules: StopRules | None = None, margin_px: float = MARGIN_PX,
                         use_point: bool = False, image: np.ndarray | None = None,
                         progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None
                         ) -> PropagationResult:
    """Propagate from user seeds (slice -> mask or box) both ways, with stop rules (the ``seeds`` preset by default).

    No positive point by default: with the deepest-point click LiteMedSAM tends to follow a part of the organ, or to
    jump to a neighbour (bench_pipeline.py measures both).

    ``limits``: the localized slice range (e.g. MedLAM's z-range); propagation may exceed it by
    ``rules.range_tolerance_slices``. ``exact_limits``: ``limits`` are the structure's first and last slices (a box
    the user drew): the walks neither leave them nor stop inside them. ``image``: enables the appearance stop rule.
    """
    shape = _check_volume_shape(shape_kji)
    rules = rules or StopRules.preset("seeds")
    if not seeds:
        raise PropagationError("propagation needs at least one seed slice")
    seed_masks, ious = _seed_masks(segmenter, shape, seeds)
    mask = np.zeros(shape, bool)
    for k, m in seed_masks.items():
        mask[k] = m
        show_slice(k, m)
    stats = _appearance(image, shape, seed_masks)
    tolerance = 0 if exact_limits else rules.range_tolerance_slices
    low, high = (0, shape[0] - 1) if limits is None else (limits[0] - tolerance, limits[1] + tolerance)
    present = tuple(limits) if exact_limits and limits is not None else None
    order = sorted(seed_masks)
    segmented = list(order)
    reasons = {}
    # Between two seeds each walks toward the other and stops when it meets an annotated slice.
    for n, k in enumerate(order):
        blocked = (set(order) | set(segmented)) - {k}  # never overwrite another seed's walk
        report(progress, n / (2 * len(order)), f"propagating from slice {k}")
        up = _walk(segmenter, mask, ious, segmented, k, +1, high, rules, margin_px, use_point, stats, image,
                   blocked, cancelled, present=present)
        down = _walk(segmenter, mask, ious, segmented, k, -1, low, rules, margin_px, use_point, stats, image,
                     blocked, cancelled, present=present)
        if k == order[-1]:
            reasons["up"] = up
        if k == order[0]:
            reasons["down"] = down
    report(progress, 1.0, "propagation done")
    return PropagationResult(mask=mask, iou=ious, segmented=sorted(set(segmented)), stop_reasons=reasons,
                             seeds=order, appearance=_described(stats, "the seed slices"))
