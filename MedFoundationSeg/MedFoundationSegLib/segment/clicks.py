"""Corrective clicks: the model re-prompted on the clicked slice, the correction spread as far as it changes things.

Why: a click is the SAM family's own prompt type. Given with the structure's box, every earlier click on the same slice
and the mask the user sees there as the mask prompt, it moves the boundary on the whole slice, not only in a disk
around the click (what a graph cut with hard seeds does). The corrected slice then prompts its neighbours outwards,
both ways, and each walk stops at the first slice where the new mask agrees with the old one (the error was local) or
where the stop rules of propagation say the structure ended; every slice beyond keeps its mask.

Arrays are slice views (slice, row, column) along the model's axis; a click is (slice, row, column) there; boxes are
(x0, y0, x1, y1) inclusive pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from MedFoundationSegLib.core.progress import CancelCheck, check, show_slice
from MedFoundationSegLib.segment.slice_boxes import (
    MARGIN_FRACTION,
    MARGIN_PX,
    grow_box,
    intersect_boxes,
    mask_box_xyxy,
    walk_prompt_xyxy,
)
from MedFoundationSegLib.segment.stop_rules import StopRules, stop_reason

MIN_CHANGE_PX = 4  # a walk stops where the model changes fewer pixels than this (or the share of the clicked change)
# A walk re-prompts at most this many slices per direction: it keeps a click on a large structure within the time of
# an interaction (one decode per slice); the structure head then carries the correction further (workflow/learning.py).
MAX_SPREAD_SLICES = 8
# After an exclude click a walk keeps the shown mask within this many pixels of the model's answer: the first cut of a
# cautious model's segmentation reaches past the model's own edge (refinement's probability shift), and the model's
# answer on the next slices would take that rim back.
RIM_PX = 2
# The model's answer on a clicked slice is another object when, after an exclude click that trims the shown mask
# (it lies less deep in the mask than this fraction of the mask's deepest point), more than this share of the answer
# lies outside the shown mask ...
TRIM_DEPTH = 0.5
# A click this few pixels from the mask's edge trims it whatever the mask's size: on a slice mask a few pixels across
# (a structure's end), the fraction alone would call a click 3 px from the edge its centre.
TRIM_MIN_DEPTH_PX = 4.0
MAX_OUTSIDE_SHARE = 0.5
# ... or, after an include click on a slice the mask does not reach, it is this many times the mask's largest slice.
MAX_END_GROWTH = 1.2


@dataclasses.dataclass(frozen=True)
class Click:
    """One corrective click: a voxel in (slice, row, column) of the slice view, foreground or background."""

    srk: tuple[int, int, int]
    positive: bool


@dataclasses.dataclass
class CorrectionResult:
    mask: np.ndarray  # bool (slices, rows, columns): the whole structure after the correction
    probability: np.ndarray  # float32, the model's probability where it was re-run, the old one elsewhere
    changed: list[int]  # slices whose mask changed (re-prompted, reached by a spread, or cleared beyond an end)
    stop_reasons: dict[str, str]  # per clicked slice and direction, why the spread stopped


def reprompt_slice(segmenter, index: int, box_xyxy, clicks: list[Click], shown_hw: np.ndarray | None,
                   *, use_mask_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mask, probability) of slice ``index`` prompted with the box, its clicks and the shown mask."""
    points_xy = np.array([[c.srk[2], c.srk[1]] for c in clicks], float).reshape(-1, 2)
    labels = np.array([1 if c.positive else 0 for c in clicks], int)
    mask_prompt = shown_hw if use_mask_prompt and shown_hw is not None and shown_hw.any() else None
    result = segmenter.segment_slice(index, box_xyxy, points_xy if len(clicks) else None,
                                     labels if len(clicks) else None, mask_prompt)
    return np.asarray(result.mask, bool), np.asarray(result.probability, np.float32)


def _grown_within(box, shape_hw, cap, margin_px: float, margin_fraction: float):
    """``box`` grown as a walk grows a prompt (``slice_boxes.walk_prompt_xyxy``), within ``cap``; None when that leaves
    less than 2 px."""
    return intersect_boxes(walk_prompt_xyxy(box, shape_hw, margin_px, margin_fraction), cap)


def _clicks_by_slice(clicks: list[Click]) -> dict[int, list[Click]]:
    by_slice: dict[int, list[Click]] = {}
    for click in clicks:
        by_slice.setdefault(int(click.srk[0]), []).append(click)
    return by_slice


def _clicks_hold(mask_hw: np.ndarray, clicks: list[Click]) -> bool:
    return all(bool(mask_hw[c.srk[1], c.srk[2]]) == c.positive for c in clicks)


def _label_clicks(probability_hw: np.ndarray, clicks: list[Click]) -> None:
    """Set each click's pixel of ``probability_hw`` to its label (in place), for the graph cut's hard seeds."""
    for click in clicks:
        probability_hw[click.srk[1], click.srk[2]] = 1.0 if click.positive else 0.0


def slice_prompt_box(mask: np.ndarray, index: int, clicks: list[Click], cap, margin_px: float,
                     margin_fraction: float) -> tuple[int, int, int, int]:
    """The box prompt of a clicked slice: the shown mask's box there (else the nearest non-empty slice's), grown to
    hold every positive click, plus a margin, never beyond ``cap`` (the structure's box). Why not the whole box: near a
    structure's ends it covers a sliver of the rectangle and a rectangle prompt makes the model fill it."""
    filled = np.flatnonzero(mask.any(axis=(1, 2)))
    box = None
    if len(filled):
        nearest = int(filled[np.argmin(np.abs(filled - index))])
        box = mask_box_xyxy(mask[nearest])
    for click in clicks:
        if click.positive:
            x, y = int(click.srk[2]), int(click.srk[1])
            box = (x, y, x, y) if box is None else (min(box[0], x), min(box[1], y), max(box[2], x), max(box[3], y))
    if box is None:
        return cap
    return _grown_within(box, mask.shape[1:], cap, margin_px, margin_fraction) or cap


def left_the_structure(answer_hw: np.ndarray, mask: np.ndarray, index: int, click: Click) -> str | None:
    """Why the model's answer on slice ``index`` after ``click`` is another object than the structure shown in
    ``mask``, or None. After an exclude click near the shown mask's edge (see ``_trims``: it trims the mask, where a
    click at its centre says the whole mask is wrong) the answer should be part of the shown mask (within ``RIM_PX``):
    at most ``MAX_OUTSIDE_SHARE`` of it may lie outside. After an include click on a slice the mask did not reach, the
    answer continues the structure: at most ``MAX_END_GROWTH`` times the largest slice of the shown mask."""
    area = int(answer_hw.sum())
    shown = mask[index]
    if not area:
        return None
    if not click.positive and shown.any() and _trims(shown, click.srk[1:]):
        outside = int((answer_hw & ~with_rim(shown)).sum())
        if outside > MAX_OUTSIDE_SHARE * area:
            return f"slice {index}: {outside} of the answer's {area} pixels lie outside the shown mask; kept it"
    if click.positive and not shown.any():
        largest = int(mask.sum(axis=(1, 2)).max())
        if largest and area > MAX_END_GROWTH * largest:
            return f"slice {index}: the answer ({area} pixels) outgrows the structure's largest slice ({largest}); kept it"
    return None


def _trims(shown_hw: np.ndarray, row_column) -> bool:
    """Whether a click at ``row_column`` lies outside ``shown_hw`` or in its outer part (``TRIM_DEPTH`` of its deepest
    point, or less than ``TRIM_MIN_DEPTH_PX`` deep)."""
    depth = ndimage.distance_transform_edt(shown_hw)
    return bool(depth[tuple(row_column)] < max(TRIM_DEPTH * depth.max(), TRIM_MIN_DEPTH_PX))


def _clear_beyond(mask: np.ndarray, probability: np.ndarray, index: int, changed: list[int]) -> str:
    """Slice ``index`` was corrected to empty: the structure ends before it, so the old masks beyond it on the side
    holding less of the structure (a run that overshot its end) are removed."""
    above, below = int(mask[index + 1:].sum()), int(mask[:index].sum())
    step = +1 if above < below else -1
    k = index + step
    while 0 <= k < mask.shape[0] and mask[k].any():
        mask[k] = False
        show_slice(k, mask[k])
        probability[k] = np.minimum(probability[k], 0.1)
        changed.append(k)
        k += step
    return f"slice {index} corrected to empty: cleared {abs(k - index) - 1} slices {'up' if step > 0 else 'down'}"


def correct_with_clicks(segmenter, mask: np.ndarray, probability: np.ndarray, box_xyxy, slice_range: tuple[int, int],
                        clicks: list[Click], new_slices: list[int] | None = None, *, agree_fraction: float = 0.2,
                        margin_px: float = MARGIN_PX, margin_fraction: float = MARGIN_FRACTION,
                        use_mask_prompt: bool = True, monotone_clicked_slice: bool = False,
                        max_spread_slices: int = MAX_SPREAD_SLICES,
                        rules: StopRules | None = None, click_segmenter=None,
                        cancelled: CancelCheck | None = None) -> CorrectionResult:
    """Re-prompt the slices in ``new_slices`` (default: every clicked slice) with all their clicks, then spread each
    correction outwards within ``slice_range`` until the new masks agree with the old ones: the walk stops at the first
    slice where the model changes fewer pixels than ``agree_fraction`` of the change on the clicked slice (and at
    least a few pixels), so a small error the click pointed at spreads as far as it reaches, whatever the slice's size,
    and after ``max_spread_slices`` slices at most.

    ``monotone_clicked_slice``: the clicked slice, too, only gains (after an include click) or loses (after an
    exclude click) voxels. ``click_segmenter``: the model asked again on the clicked slices (one that reads point
    prompts), when not ``segmenter``; the walk beyond them prompts ``segmenter`` with boxes. ``mask``/``probability``
    are what the user sees now; they are not modified. A walk never enters another clicked
    slice (it holds its own correction) and never ends a structure the old mask continued: when the model's answer
    fails the stop rules the old masks beyond are kept."""
    rules = rules or StopRules.preset("box_guided")
    mask, probability = np.array(mask, bool), np.array(probability, np.float32)
    by_slice = _clicks_by_slice(clicks)
    redo = sorted(by_slice if new_slices is None else {int(k) for k in new_slices} & set(by_slice))
    first, last = slice_range
    cap = tuple(int(v) for v in box_xyxy)
    changed, reasons = [], {}
    for k in redo:
        check(cancelled, "correction")
        prompt = slice_prompt_box(mask, k, by_slice[k], cap, margin_px, margin_fraction)
        m, p = reprompt_slice(click_segmenter or segmenter, k, prompt, by_slice[k], mask[k],
                              use_mask_prompt=use_mask_prompt)
        if monotone_clicked_slice:  # the clicked slice too only changes the way its last click asks
            m = (m | mask[k]) if by_slice[k][-1].positive else (m & mask[k])
        left = left_the_structure(m, mask, k, by_slice[k][-1])
        if left:  # the shown mask stands, nothing spreads; the clicks' hard seeds in the graph cut correct it
            reasons[f"{k}"] = left
            _label_clicks(probability[k], by_slice[k])
            continue
        if not _clicks_hold(m, by_slice[k]):  # the model ignored a click: the graph cut's hard seeds will hold it
            _label_clicks(p, by_slice[k])
        change = int((m ^ mask[k]).sum())
        if change:
            changed.append(k)
        mask[k], probability[k] = m, p
        show_slice(k, m)
        if not m.any():
            reasons[f"{k}"] = _clear_beyond(mask, probability, k, changed)
            continue
        for side, step, limit in (("up", +1, min(last, k + max_spread_slices)),
                                  ("down", -1, max(first, k - max_spread_slices))):
            reasons[f"{k} {side}"] = _spread(segmenter, mask, probability, k, step, limit, set(by_slice), changed,
                                             cap, max(MIN_CHANGE_PX, agree_fraction * change), margin_px,
                                             margin_fraction, rules, cancelled, by_slice[k][-1].positive)
    return CorrectionResult(mask, probability, sorted(set(changed)), reasons)


def with_rim(mask_hw: np.ndarray, rim_px: int = RIM_PX) -> np.ndarray:
    """A slice's mask grown by a rim of ``rim_px`` pixels (a dilation with a disk)."""
    return ndimage.binary_dilation(mask_hw, disk(rim_px)) if mask_hw.any() else mask_hw


def _spread(segmenter, mask, probability, start: int, step: int, limit: int, clicked: set[int], changed: list[int],
            cap, agree_px: float, margin_px: float, margin_fraction: float, rules: StopRules, cancelled,
            adds: bool) -> str:
    """Walk from the corrected slice ``start``; beyond it a correction only goes the way its click went: after a
    positive click the model's answer may only add to the shown mask, after a negative one only take away. Why: the
    neighbours were not looked at; what the click did not ask for there stays as the user saw it."""
    prev = mask[start]
    max_area = int(prev.sum())
    k = start + step
    while 0 <= k < mask.shape[0] and (k <= limit if step > 0 else k >= limit):
        check(cancelled, "correction")
        if k in clicked:
            return f"met the clicked slice {k}"
        # adding: what is beyond the corrected mask, prompted by it; taking away: which part of the shown mask is
        # right, prompted by the shown mask's box
        box = mask_box_xyxy(prev if adds else mask[k])
        if box is None:
            return f"nothing {'to follow' if adds else 'left to take away'} at slice {k}"
        # a mask outside the structure's box (drawn or edited there) is followed with its own box plus the margin
        prompt = _grown_within(box, mask.shape[1:], cap, margin_px, margin_fraction) or \
            grow_box(box, margin_px, mask.shape[1:])
        result = segmenter.segment_slice(k, prompt)
        answer = np.asarray(result.mask, bool)
        if adds:  # a leak must not be added
            reason = stop_reason(answer, float(result.predicted_iou), prev, max_area, rules, None, None)
            if reason is not None:
                return f"{reason} at slice {k}; the old masks beyond are kept"
        m = (mask[k] | answer) if adds else (mask[k] & with_rim(answer))
        if int((m ^ mask[k]).sum()) < agree_px:
            return f"agrees with the old mask at slice {k}"
        p = np.asarray(result.probability, np.float32)
        mask[k], probability[k] = m, np.maximum(probability[k], p) if adds else \
            np.where(m != mask[k], np.minimum(probability[k], p), probability[k])
        show_slice(k, m)
        changed.append(k)
        max_area = max(max_area, int(m.sum()))
        prev = m
        k += step
    return f"reached the end of its walk at slice {k - step}"
