"""Weak-supervision refinement: turn a model's soft, noisy mask into one that follows image edges and obeys the user.

Why: SAM-family masks leak, miss tapering ends and ignore 3D consistency, while the user's weak annotations (box,
extreme points, clicks, scribbles) are reliable. We treat the model probability as soft evidence and the annotations
as hard constraints, and solve a per-case energy on a crop (no training):

- ``graphcut`` (default): max-flow with a contrast-sensitive pairwise term (PyMaxflow).
- ``geodesic``: exponentialised geodesic distances from seeds fused with the probability, then the same cut.
- ``growcut``: multi-label shortest-path region growing from a trimap (ITK FastGrowCut = Slicer "Grow from seeds").

Arrays are (z, y, x) (a 2D (y, x) input is treated as one slice); boxes are inclusive ((k0, k1), (j0, j1), (i0, i1))
voxel ranges; points are (k, j, i) voxel indices; spacing is (x, y, z) mm as in ``Volume``.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report
from MedFoundationSegLib.segment.click_evidence import click_influence, exclude_regions
from MedFoundationSegLib.segment.graphcut import (
    Annotations,
    GraphCutParams,
    RefineError,
    RefineResult,
    _as_3d,
    _crop_region,
    _disk_mask,
    _finish,
    _max_flow,
    _normalise,
    _points,
    _postprocess,
    _prepare,
    _Problem,
    mask_box_kji,
)


def refine_graphcut(image: np.ndarray, prob: np.ndarray, annotations: Annotations | None = None, *,
                    spacing_mm=(1.0, 1.0, 1.0), params: GraphCutParams | None = None,
                    progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> RefineResult:
    """Constrained graph cut on a crop: softened model probability + hard box/point/scribble constraints."""
    start = time.perf_counter()
    params = params or GraphCutParams()
    problem = _prepare(image, prob, annotations, params)
    local = click_influence(problem.prob, problem.clicks_kji, problem.click_positive, spacing_mm,
                            params.click_influence_mm, params.exclude_pull_axis, params.exclude_influence_mm)
    if params.exclude_unlike_tissue:
        unlike = exclude_regions(problem.prob, problem.image, problem.clicks_kji, problem.click_positive)
        local = np.where(unlike, 0.0, local).astype(np.float32)
    report(progress, 0.1, "graph cut: building graph")
    check(cancelled, "refinement")
    sub = _max_flow(local, _normalise(problem.image, problem.prob), problem.hard_fg, problem.hard_bg,
                    spacing_mm, params)
    check(cancelled, "refinement")
    sub = _kept_if_emptied(_postprocess(sub, problem.hard_fg, params, problem.hard_bg), prob, problem)
    report(progress, 1.0, "graph cut: done")
    return _finish(problem, sub, start, "graphcut")


def _model_mask(prob: np.ndarray, problem: _Problem) -> np.ndarray:
    """The model's mask (``prob`` at 0.5) on the problem's crop, within its hard constraints: what a refinement
    without clicks returns instead of nothing. Why: the cut's smoothness can take a thin structure (a pancreas a few voxels
    high) whole, and an empty result would lose what the model found where the user's box says a structure is."""
    return ((_as_3d(prob)[problem.crop] >= 0.5) | problem.hard_fg) & ~problem.hard_bg


def _kept_if_emptied(sub: np.ndarray, prob: np.ndarray, problem: _Problem) -> np.ndarray:
    """A cut's result, or the model's mask (``_model_mask``) where a cut without clicks came back empty."""
    return _model_mask(prob, problem) if not sub.any() and not len(problem.clicks_kji) else sub


def _geodesic_distance(image: np.ndarray, seeds: np.ndarray, spacing_xyz, gradient_weight: float) -> np.ndarray:
    """Geodesic distance (mm-like) from seed voxels; each step costs 1 + gradient_weight * |grad I| (dijkstra3d)."""
    import dijkstra3d

    if not seeds.any():
        return np.full(image.shape, np.inf, np.float32)
    spacing_kji = np.array(spacing_xyz, float)[::-1]
    grad = ndimage.gaussian_gradient_magnitude(image, 1.0)
    cost = (1.0 + gradient_weight * grad / (np.median(grad) + 1e-6)).astype(np.float32) * float(spacing_kji.mean())
    # dijkstra3d indexes (x, y, z) of a Fortran-ordered field; a C-ordered (z, y, x) array transposes for free.
    field = dijkstra3d.distance_field(np.asfortranarray(cost.T), [tuple(p) for p in np.argwhere(seeds.T)],
                                      connectivity=6)
    return np.ascontiguousarray(field.T).astype(np.float32)


def refine_geodesic(image: np.ndarray, prob: np.ndarray, annotations: Annotations | None = None, *,
                    spacing_mm=(1.0, 1.0, 1.0), params: GraphCutParams | None = None, scale_mm: float = 6.0,
                    gradient_weight: float = 2.0, core_erosion_vox: int = 2,
                    progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> RefineResult:
    """Geodesic seed fusion (UM-CAM GSE style) then the constrained cut.

    Foreground seeds = hard foreground + the eroded confident core of the model mask; background seeds = hard
    background. Near seeds the geodesic evidence wins, far from them the model probability does.
    """
    start = time.perf_counter()
    params = params or GraphCutParams()
    problem = _prepare(image, prob, annotations, params)
    norm = _normalise(problem.image, problem.prob)
    core = ndimage.binary_erosion(problem.prob > 0.5, iterations=core_erosion_vox) if core_erosion_vox else \
        problem.prob > 0.5
    fg_seeds = problem.hard_fg | (core & ~problem.hard_bg)
    bg_seeds = problem.hard_bg.copy()
    if not bg_seeds.any():  # no box: the crop's outer shell is background
        bg_seeds[[0, -1]] = problem.prob.shape[0] > 2
        bg_seeds[:, [0, -1]] = True
        bg_seeds[:, :, [0, -1]] = True
        bg_seeds &= problem.prob < 0.5
    report(progress, 0.1, "geodesic: distance maps")
    d_fg = _geodesic_distance(norm, fg_seeds, spacing_mm, gradient_weight)
    check(cancelled, "refinement")
    d_bg = _geodesic_distance(norm, bg_seeds, spacing_mm, gradient_weight)
    check(cancelled, "refinement")
    g_fg, g_bg = np.exp(-d_fg / scale_mm), np.exp(-d_bg / scale_mm)
    p_geo = g_fg / (g_fg + g_bg + 1e-6)
    p_geo = np.where((g_fg + g_bg) < 1e-6, 0.5, p_geo)
    trust = np.clip(2.0 * np.maximum(g_fg, g_bg) - 1.0, 0.0, 1.0)
    fused = (trust * p_geo + (1.0 - trust) * problem.prob).astype(np.float32)
    report(progress, 0.6, "geodesic: graph cut")
    sub = _max_flow(fused, norm, problem.hard_fg, problem.hard_bg, spacing_mm, params)
    sub = _kept_if_emptied(_postprocess(sub, problem.hard_fg, params, problem.hard_bg), prob, problem)
    report(progress, 1.0, "geodesic: done")
    return _finish(problem, sub, start, "geodesic")


def refine_growcut(image: np.ndarray, prob: np.ndarray, annotations: Annotations | None = None, *,
                   spacing_mm=(1.0, 1.0, 1.0), params: GraphCutParams | None = None, core_erosion_vox: int = 3,
                   ring_dilation_vox: int = 5, distance_penalty: float = 0.0,
                   progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> RefineResult:
    """GrowCut from a trimap (Slicer "Grow from seeds"): fg = eroded model mask + fg seeds; bg = outside the
    dilated mask or box + bg seeds; the uncertain band between them is decided by ITK FastGrowCut."""
    import itk

    start = time.perf_counter()
    params = params or GraphCutParams()
    problem = _prepare(image, prob, annotations, params)
    mask = problem.prob > 0.5
    seeds = np.zeros(mask.shape, np.uint8)
    seeds[~ndimage.binary_dilation(mask, iterations=ring_dilation_vox) | problem.hard_bg] = 2
    fg = (ndimage.binary_erosion(mask, iterations=core_erosion_vox) & ~problem.hard_bg) | problem.hard_fg
    seeds[fg] = 1
    if not (seeds == 1).any():
        if mask.any() and not len(problem.clicks_kji):  # nothing to grow from: the model's mask stands
            return _finish(problem, _model_mask(prob, problem), start, "growcut")
        raise RefineError("growcut needs foreground seeds: the mask is too thin to erode and no include click "
                          "was given")
    report(progress, 0.2, "growcut: growing")
    check(cancelled, "refinement")
    itk_image = itk.image_from_array(np.ascontiguousarray(problem.image, np.float32))
    itk_seeds = itk.image_from_array(seeds)
    for img in (itk_image, itk_seeds):
        img.SetSpacing([float(s) for s in spacing_mm])
    grow = itk.FastGrowCut[type(itk_image), type(itk_seeds)].New()
    grow.SetInput(itk_image)
    grow.SetSeedImage(itk_seeds)
    grow.SetDistancePenalty(float(distance_penalty))
    grow.Update()
    sub = itk.array_from_image(grow.GetOutput()) == 1
    sub = _postprocess(sub, problem.hard_fg, params, problem.hard_bg)
    report(progress, 1.0, "growcut: done")
    return _finish(problem, sub, start, "growcut")


METHODS = {"graphcut": refine_graphcut, "geodesic": refine_geodesic, "growcut": refine_growcut}


def refine(image, prob, annotations: Annotations | None = None, *, method: str = "graphcut", **kwargs) -> RefineResult:
    """Dispatch by method name (graphcut | geodesic | growcut)."""
    if method not in METHODS:
        raise RefineError(f"unknown refinement method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](image, prob, annotations, **kwargs)


def recut_at_click(image: np.ndarray, mask: np.ndarray, click_kji, positive: bool, *, prob: np.ndarray | None = None,
                   spacing_mm=(1.0, 1.0, 1.0), slices_each_side: int = 2, margin_vox: int = 15,
                   params: GraphCutParams | None = None) -> RefineResult:
    """Local re-cut after one click: only slices k-n..k+n around the click, near the current mask, change.

    The border of the local crop keeps the current labels as hard constraints, so the edit stitches seamlessly.
    """
    start = time.perf_counter()
    params = params or GraphCutParams()
    image3, mask3 = _as_3d(image), _as_3d(np.asarray(mask, bool))
    if mask3.shape != image3.shape:
        raise RefineError(f"mask shape {np.shape(mask)} does not match image shape {np.shape(image)}")
    click = _points(click_kji, image3.shape, "click")
    if len(click) != 1:
        raise RefineError("recut_at_click takes exactly one click")
    k, j, i = click[0]
    region_mask = np.zeros(mask3.shape, bool)
    region_mask[max(k - slices_each_side, 0):k + slices_each_side + 1] = True
    near = mask_box_kji(mask3 & region_mask)
    boxes = [((k, k), (j, j), (i, i))] + ([near] if near else [])
    crop = _crop_region(mask3.shape, boxes, (0, margin_vox, margin_vox))
    crop = (slice(max(k - slices_each_side, 0), min(k + slices_each_side + 1, mask3.shape[0])),) + crop[1:]
    current = mask3[crop]
    base = current.astype(np.float32) if prob is None else np.maximum(_as_3d(prob)[crop], 0) * 0.5 + current * 0.5
    # The click shifts the evidence around it; the solver then finds the image edge nearest to the user's intent.
    point = np.array([[k, j, i]]) - np.array([s.start for s in crop])
    disk = _disk_mask(current.shape, point, params.click_radius_vox)
    reach = ndimage.distance_transform_edt(~disk)
    influence = np.exp(-reach / max(margin_vox / 2, 1))
    target = 1.0 if positive else 0.0
    local_prob = (base * (1 - influence) + target * influence).astype(np.float32)
    hard_fg = disk.copy() if positive else np.zeros_like(disk)
    hard_bg = disk.copy() if not positive else np.zeros_like(disk)
    border = np.ones(current.shape, bool)
    border[:, 1:-1, 1:-1] = False
    hard_fg |= border & current
    hard_bg |= border & ~current & ~hard_fg
    norm = _normalise(np.asarray(image3[crop], np.float32), local_prob)
    sub = _max_flow(local_prob, norm, hard_fg, hard_bg, spacing_mm, params)
    out = mask3.copy()
    out[crop] = sub
    if mask is not None and np.ndim(mask) == 2:
        return RefineResult(mask=out[0], crop=crop[1:], seconds=time.perf_counter() - start, method="recut")
    return RefineResult(mask=out, crop=crop, seconds=time.perf_counter() - start, method="recut")
