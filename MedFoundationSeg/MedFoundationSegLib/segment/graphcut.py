"""The pieces every refinement shares: inputs (annotations, parameters, result), the crop around what matters, the
contrast-sensitive max-flow solver (PyMaxflow) and its post-processing. The methods themselves are in ``refine``.

Arrays are (z, y, x) (a 2D (y, x) input is treated as one slice); boxes are inclusive ((k0, k1), (j0, j1), (i0, i1))
voxel ranges; points are (k, j, i) voxel indices; spacing is (x, y, z) mm as in ``Volume``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.segment import min_cut

BoxKJI = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class RefineError(ValueError):
    """Refinement was given inconsistent inputs (shapes, boxes, points)."""


@dataclasses.dataclass
class Annotations:
    """The user's weak labels. Extreme points and positive clicks are foreground; negative clicks background."""

    box_kji: BoxKJI | None = None
    extreme_points_kji: np.ndarray | None = None  # (N, 3)
    clicks_kji: np.ndarray | None = None  # (N, 3)
    click_positive: np.ndarray | None = None  # (N,) bool
    fg_scribble: np.ndarray | None = None  # bool, same shape as the image
    bg_scribble: np.ndarray | None = None


@dataclasses.dataclass
class GraphCutParams:
    smoothness: float = 5.0  # lambda: weight of the pairwise term against the unary
    softness: float = 0.8  # p' = 0.5 + (p - 0.5) * softness, so the image can overrule the model
    # Outside the box grown by this much is certain background: voxels, or (k, j, i) voxels per axis (0 along the
    # slice axis where the box's slice range is the structure's: a drawn box, a correction's box).
    box_margin_vox: int | tuple[int, int, int] = 2
    click_radius_vox: int = 2  # clicks become small disks
    # A click also pulls the model's probability towards its label around it, fading as exp(-distance / this), so
    # one click can correct a whole wrong region instead of a disk (0: clicks are hard disks only). A wider reach makes
    # well-started structures oscillate under repeated clicks (benchmarks/bench_click_influence.py).
    click_influence_mm: float = 8.0
    # An exclude click pulls only within its own slice along this (z, y, x) axis; None: in 3D like an include click.
    # After a correction on thick slices (Session.correct sets the model's axis there) the model re-prompted at the
    # click has already taken away what it should on the neighbouring slices: a 3D pull emptied end slices it kept.
    exclude_pull_axis: int | None = None
    # How far an exclude click pulls (mm); None: as far as an include click (click_influence_mm).
    exclude_influence_mm: float | None = None
    # An exclude click on tissue unlike the structure takes that tissue's region in the mask (segment/click_evidence.py)
    exclude_unlike_tissue: bool = True
    crop_margin_vox: tuple[int, int, int] = (3, 12, 12)  # (k, j, i)
    appearance_weight: float = 0.5  # weight of the intensity-histogram likelihood learnt from the model's mask
    core_seed_fraction: float = 0.6  # per slice, voxels deeper than this fraction of the mask's max depth are fg
    keep_largest_component: bool = True
    fill_holes: bool = True
    # The cut is solved only within this many voxels (along the finest axis; fewer along coarser ones) of where the
    # voxels' own (unary) labels change, and where those labels are weak (costs closer than band_weak_cost);
    # elsewhere they stand (segment/min_cut.py). None: over the whole crop.
    band_radius_vox: int | None = 8
    band_weak_cost: float = 0.5
    # Added to the model's probability before the cut (clipped to [0, 1]), for a model whose masks stop short of the
    # structure's edge (registry: ``refinement.cut_probability_shift``, see ``cut_probability_shift``): the voxels it is
    # unsure of lean to the structure, and the image's edges decide where the mask ends.
    probability_shift: float = 0.0
    # The shift reaches this many equivalent radii (of the model's mask on each slice) beyond that mask: it carries
    # the mask to a nearby edge, but does not flood low-contrast surroundings the model was unsure of. None: everywhere.
    shift_reach_per_radius: float | None = 1.5


@dataclasses.dataclass
class RefineResult:
    mask: np.ndarray  # bool, full size
    crop: tuple[slice, ...]  # region that was solved
    seconds: float
    method: str


def cut_probability_shift(model: str | None) -> float:
    """The registry's ``refinement.cut_probability_shift`` of ``model`` (0 for models without one, or no model)."""
    from MedFoundationSegLib.core.weights import model_setting

    return float(model_setting(model, "refinement", "cut_probability_shift", 0.0))


def thin_slice_exclude_reach(model: str | None) -> tuple[float, float] | None:
    """The registry's ``refinement.thin_slice_exclude_reach`` of ``model``: on thin slices, how far an exclude click
    pulls after a correction of a segment this model made, as (fraction of the mask's equivalent radius, farthest mm);
    None: the Session's defaults (``EXCLUDE_REACH_PER_RADIUS``, no farther than an include click)."""
    from MedFoundationSegLib.core.weights import model_setting

    reach = model_setting(model, "refinement", "thin_slice_exclude_reach")
    return None if reach is None else (float(reach["per_radius"]), float(reach["farthest_mm"]))


def box_margin_without(axis_kji: int) -> tuple[int, int, int]:
    """``GraphCutParams.box_margin_vox`` per (k, j, i) axis, with none along ``axis_kji``: where the box's slices along
    it are the structure's (a drawn box, a correction's box), the cut keeps to them."""
    return tuple(0 if axis == axis_kji else GraphCutParams.box_margin_vox for axis in range(3))


def agree_with_mask(prob: np.ndarray, mask: np.ndarray, sure: float = 0.75, hold_inside: bool = False) -> np.ndarray:
    """The probability where it agrees with ``mask`` (taken at 0.5), ``sure`` or ``1 - sure`` where the mask decided
    otherwise: what a cut decided, carried to later cuts that do not repeat its settings. With ``hold_inside`` every
    voxel of the mask is at least ``sure``: a later cut as smooth as this one then keeps the mask, where the model's
    own 0.5-0.75 would let it shrink a small structure back to its sure core."""
    prob = np.asarray(prob, np.float32)
    mask = np.asarray(mask, bool)
    inside = np.maximum(prob, sure) if hold_inside else np.where(prob < 0.5, sure, prob)
    return np.where(mask, inside, np.where(prob >= 0.5, 1.0 - sure, prob)).astype(np.float32)


def shifted_probability(prob_kji: np.ndarray, shift: float, reach_per_radius: float | None) -> np.ndarray:
    """``prob_kji`` plus ``shift`` (clipped to [0, 1]) on each slice within ``reach_per_radius`` equivalent radii of
    the slice's mask (``prob >= 0.5``; a slice without one is not shifted), or everywhere with ``None``."""
    if not shift:
        return prob_kji
    if reach_per_radius is None:
        return np.clip(prob_kji + shift, 0.0, 1.0)
    out = prob_kji.copy()
    for prob_hw, out_hw in zip(prob_kji, out):
        mask_hw = prob_hw >= 0.5
        if mask_hw.any():
            reach_px = max(2.0, reach_per_radius * np.sqrt(mask_hw.sum() / np.pi))
            near = ndimage.distance_transform_edt(~mask_hw) <= reach_px
            out_hw[near] = np.clip(prob_hw[near] + shift, 0.0, 1.0)
    return out


# --- input handling ------------------------------------------------------------------------------------------------

def _as_3d(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    return array[None] if array.ndim == 2 else array


def _points(points, shape, what: str) -> np.ndarray:
    if points is None:
        return np.zeros((0, 3), int)
    points = np.atleast_2d(np.asarray(points))
    if points.size == 0:
        return np.zeros((0, 3), int)
    if points.shape[1] == 2:  # 2D (j, i)
        points = np.concatenate([np.zeros((len(points), 1)), points], axis=1)
    if points.shape[1] != 3:
        raise RefineError(f"{what} must be (N, 3) (k, j, i) voxel indices; got shape {points.shape}")
    points = np.rint(points).astype(int)
    inside = np.all((points >= 0) & (points < np.array(shape)), axis=1)
    if not inside.all():
        raise RefineError(f"{what} {points[~inside].tolist()} lie outside the image of shape {shape}")
    return points


def _check_box(box, shape) -> BoxKJI | None:
    if box is None:
        return None
    box = tuple((int(lo), int(hi)) for lo, hi in box)
    if len(box) == 2:
        box = ((0, 0),) + box
    if len(box) != 3 or any(lo > hi for lo, hi in box):
        raise RefineError(f"box must be 3 inclusive (low, high) ranges (k, j, i); got {box}")
    if any(hi < 0 or lo >= n for (lo, hi), n in zip(box, shape)):
        raise RefineError(f"box {box} does not intersect the image of shape {shape}")
    return tuple((max(lo, 0), min(hi, n - 1)) for (lo, hi), n in zip(box, shape))


def _disk_mask(shape, points: np.ndarray, radius: int) -> np.ndarray:
    """Small in-plane disks (radius in voxels) around points; clicks are 2D gestures on one slice."""
    mask = np.zeros(shape, bool)
    if len(points) == 0:
        return mask
    mask[tuple(points.T)] = True
    if radius > 0:
        footprint = np.zeros((1, 2 * radius + 1, 2 * radius + 1), bool)
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        footprint[0] = yy**2 + xx**2 <= radius**2
        mask = ndimage.binary_dilation(mask, footprint)
    return mask


def mask_box_kji(mask: np.ndarray) -> BoxKJI | None:
    """Inclusive (first, last) per axis of the true voxels; None for an empty mask."""
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append((int(present[0]), int(present[-1])))
    return tuple(out)


def _crop_region(shape, boxes: list[BoxKJI | None], margin) -> tuple[slice, slice, slice]:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        raise RefineError("nothing to refine: the probability is empty and there is no box, click or scribble")
    lo = np.min([[r[0] for r in b] for b in boxes], axis=0) - np.asarray(margin)
    hi = np.max([[r[1] for r in b] for b in boxes], axis=0) + np.asarray(margin)
    return tuple(slice(max(int(a), 0), min(int(b) + 1, n)) for a, b, n in zip(lo, hi, shape))


@dataclasses.dataclass
class _Problem:
    """Everything cropped and ready for a solver."""

    image: np.ndarray  # float32 crop
    prob: np.ndarray  # float32 crop
    hard_fg: np.ndarray
    hard_bg: np.ndarray
    crop: tuple[slice, ...]
    shape: tuple[int, ...]
    squeeze: bool  # input was 2D
    clicks_kji: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3), int))  # in the crop
    click_positive: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))


def _prepare(image, prob, annotations: Annotations | None, params: GraphCutParams) -> _Problem:
    squeeze = np.ndim(image) == 2
    image3, prob3 = _as_3d(image), _as_3d(prob)
    if image3 is None or image3.ndim != 3:
        raise RefineError(f"image must be 2D or 3D; got shape {np.shape(image)}")
    if prob3.shape != image3.shape:
        raise RefineError(f"probability shape {np.shape(prob)} does not match image shape {np.shape(image)}")
    prob3 = np.asarray(prob3, np.float32)
    if prob3.dtype != bool and (np.nanmin(prob3) < 0 or np.nanmax(prob3) > 1 or not np.isfinite(prob3).all()):
        raise RefineError("probability must hold finite values in [0, 1] (pass sigmoid(logits) or a mask)")
    prob3 = shifted_probability(prob3, params.probability_shift, params.shift_reach_per_radius)
    ann = annotations or Annotations()
    shape = image3.shape
    box = _check_box(ann.box_kji, shape)
    extreme = _points(ann.extreme_points_kji, shape, "extreme points")
    clicks = _points(ann.clicks_kji, shape, "clicks")
    positive = np.zeros(len(clicks), bool) if ann.click_positive is None else np.asarray(ann.click_positive, bool)
    if positive.shape != (len(clicks),):
        raise RefineError(f"click_positive needs one flag per click ({len(clicks)}); got shape {positive.shape}")
    scribbles = []
    for name in ("fg_scribble", "bg_scribble"):
        s = _as_3d(getattr(ann, name))
        if s is not None and s.shape != shape:
            raise RefineError(f"{name} shape {s.shape} does not match image shape {shape}")
        scribbles.append(None if s is None else s.astype(bool))
    fg_scribble, bg_scribble = scribbles

    boxes = [mask_box_kji(prob3 > 0.5), box]
    boxes += [((int(p[0]),) * 2, (int(p[1]),) * 2, (int(p[2]),) * 2) for p in np.concatenate([extreme, clicks])]
    boxes += [mask_box_kji(s) for s in (fg_scribble,) if s is not None]
    if box is not None:  # the box is a hard limit: never crop far beyond it
        boxes = [box] + [b for b in boxes[2:]]
    margin = np.array(params.crop_margin_vox)
    if squeeze:
        margin[0] = 0
    crop = _crop_region(shape, boxes, margin)
    sub = tuple(s.stop - s.start for s in crop)

    hard_fg = np.zeros(sub, bool)
    hard_bg = np.zeros(sub, bool)
    offset = np.array([s.start for s in crop])
    if box is not None:
        inside = np.zeros(sub, bool)
        lo = np.maximum(np.array([b[0] for b in box]) - params.box_margin_vox - offset, 0)
        hi = np.array([b[1] for b in box]) + params.box_margin_vox - offset + 1
        inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        hard_bg |= ~inside
    if len(extreme):
        hard_fg |= _disk_mask(sub, extreme - offset, 0)
    if len(clicks):
        hard_fg |= _disk_mask(sub, clicks[positive] - offset, params.click_radius_vox)
        hard_bg |= _disk_mask(sub, clicks[~positive] - offset, params.click_radius_vox)
    if fg_scribble is not None:
        hard_fg |= fg_scribble[crop]
    if bg_scribble is not None:
        hard_bg |= bg_scribble[crop]
    hard_bg &= ~hard_fg  # a click inside the dilated box margin wins over the box
    return _Problem(image=np.asarray(image3[crop], np.float32), prob=prob3[crop], hard_fg=hard_fg,
                    hard_bg=hard_bg, crop=crop, shape=shape, squeeze=squeeze,
                    clicks_kji=(clicks - offset).reshape(-1, 3), click_positive=positive)


# --- solvers -------------------------------------------------------------------------------------------------------

def _pairwise_weights(image: np.ndarray, spacing_xyz, smoothness: float) -> list[np.ndarray]:
    """Boykov-Jolly edge weights per axis: lambda * exp(-beta dI^2) / step length (beta from the crop's contrast)."""
    diffs = [np.diff(image, axis=a) for a in range(3) if image.shape[a] > 1]
    mean_sq = np.mean(np.concatenate([d.ravel() ** 2 for d in diffs])) if diffs else 1.0
    beta = 1.0 / (2.0 * max(float(mean_sq), 1e-6))
    spacing_kji = np.array(spacing_xyz, float)[::-1]
    weights = []
    for axis in range(3):
        w = np.zeros(image.shape, np.float32)
        if image.shape[axis] > 1:
            d = np.diff(image, axis=axis)
            edge = smoothness * np.exp(-beta * d * d) * (spacing_kji.min() / spacing_kji[axis])
            index = [slice(None)] * 3
            index[axis] = slice(0, -1)
            w[tuple(index)] = edge
        weights.append(w)
    return weights


def _histogram_likelihood(image: np.ndarray, prob: np.ndarray, hard_fg: np.ndarray, hard_bg: np.ndarray,
                          bins: int = 64) -> np.ndarray:
    """P(fg | intensity) from histograms of the model's fg/bg (plus seeds), Dirichlet-smoothed (MONAI Label style)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    index = np.clip(((image - lo) / max(hi - lo, 1e-6) * (bins - 1)).astype(int), 0, bins - 1)
    fg = ((prob > 0.5) | hard_fg) & ~hard_bg
    bg = ~fg
    h_fg = np.bincount(index[fg], minlength=bins) + 1.0
    h_bg = np.bincount(index[bg], minlength=bins) + 1.0
    h_fg, h_bg = h_fg / h_fg.sum(), h_bg / h_bg.sum()
    ratio = h_fg / (h_fg + h_bg)
    return np.clip(ratio[index], 0.02, 0.98).astype(np.float32)


def _deep_core(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Per slice, the part of the mask deeper than ``fraction`` of its maximum in-plane depth (surely object)."""
    core = np.zeros_like(mask)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        depth = ndimage.distance_transform_edt(mask[k])
        if depth.max() >= 3:
            core[k] = depth >= max(fraction * depth.max(), 2.0)
    return core


def _max_flow(prob: np.ndarray, image: np.ndarray, hard_fg: np.ndarray, hard_bg: np.ndarray, spacing_xyz,
              params: GraphCutParams) -> np.ndarray:
    p = np.clip(0.5 + (prob - 0.5) * params.softness, 1e-4, 1 - 1e-4)
    cost_fg = -np.log(p)  # paid when a voxel is labelled foreground
    cost_bg = -np.log(1.0 - p)
    if params.appearance_weight > 0:
        like_fg = _histogram_likelihood(image, prob, hard_fg, hard_bg)
        cost_fg = cost_fg - params.appearance_weight * np.log(like_fg)
        cost_bg = cost_bg - params.appearance_weight * np.log(1.0 - like_fg)
    if params.core_seed_fraction > 0:
        hard_fg = hard_fg | (_deep_core(prob > 0.5, params.core_seed_fraction) & ~hard_bg)
    weights = _pairwise_weights(image, spacing_xyz, params.smoothness)
    fixed_fg, fixed_bg = hard_fg, hard_bg  # disjoint: _prepare and the deep core leave hard_bg out of hard_fg
    if params.band_radius_vox is not None:  # far from where the unary labels change, they stand
        spacing_kji = np.asarray(spacing_xyz, float)[::-1]
        radius_kji = np.maximum(1, np.round(params.band_radius_vox * spacing_kji.min() / spacing_kji)).astype(int)
        unary = min_cut.unary_labels(cost_fg, cost_bg, fixed_fg, fixed_bg)
        settled = ~min_cut.open_band(unary, cost_fg, cost_bg, radius_kji, params.band_weak_cost)
        fixed_fg, fixed_bg = fixed_fg | (settled & unary), fixed_bg | (settled & ~unary)
    return min_cut.min_cut_labels(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)


def _postprocess(mask: np.ndarray, hard_fg: np.ndarray, params: GraphCutParams,
                 hard_bg: np.ndarray | None = None) -> np.ndarray:
    if params.keep_largest_component and mask.any():
        parts, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(parts.ravel())
            sizes[0] = 0
            keep = {int(np.argmax(sizes))} | set(np.unique(parts[hard_fg & mask]).tolist()) - {0}
            mask = np.isin(parts, list(keep))
    if params.fill_holes and mask.any():
        # Per slice (2D holes) as well as in 3D, as the user sees slices.
        mask = ndimage.binary_fill_holes(mask)
        mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    if hard_bg is not None:  # filling must not undo a negative click
        mask &= ~hard_bg
    return mask


def _normalise(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Z-score with the statistics of the likely object, so thresholds do not depend on HU vs MR units."""
    core = prob > 0.5
    ref = image[core] if core.sum() > 20 else image
    return (image - np.median(ref)) / (float(ref.std()) + 1e-3)


def _finish(problem: _Problem, sub_mask: np.ndarray, start: float, method: str) -> RefineResult:
    mask = np.zeros(problem.shape, bool)
    mask[problem.crop] = sub_mask
    crop = problem.crop
    if problem.squeeze:
        mask, crop = mask[0], crop[1:]
    return RefineResult(mask=mask, crop=crop, seconds=time.perf_counter() - start, method=method)
