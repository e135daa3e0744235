"""How clicks change the evidence the graph cut sees: each click pulls the model's probability towards its label
around it, and an exclude click on tissue unlike the structure takes out the whole region of that tissue inside the
mask.

Why the regions: a click's pull fades within a few millimetres, so an exclude click on a rim of fat or a neighbour
that the model took in changes a few dozen voxels, and the next cut keeps the rest because the model's probability
there is high. Where the clicked tissue's intensity is clearly unlike the structure's, every voxel of the mask
connected to the click that looks like the click rather than like the structure is what the user meant. Where the
intensities are alike (a neighbour of the same tissue), the image cannot say where the click's region ends and nothing
is added.

Arrays are (z, y, x) crops; clicks are (k, j, i) indices in the crop; spacing is (x, y, z) mm as in ``Volume``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# The click's tissue must lie this many robust standard deviations from the structure's median intensity ...
DISTINCT_SIGMAS = 3.0
# ... and a voxel joins its region only this many deviations away from that median, nearer the click's intensity.
REGION_SIGMAS = 2.0
# The clicked tissue is one tissue: around the click its spread is at most this fraction of its distance from the
# structure's median (a click on an edge, where two tissues blur, takes nothing).
MAX_SPREAD_FRACTION = 0.25
# A tissue making up this share of the mask's interior is taken as part of the structure (a stomach's gas, a
# cyst's fluid), not as a neighbour the model took in.
MAX_INTERIOR_SHARE = 0.3
# The region is connected to the click through the mask, or through this many voxels around the click on its slice
# (a clicked slice the model answered again may have left the click's surroundings out of the mask already).
CLICK_REACH_VOX = 6
SMOOTHING_VOX = (0.0, 1.0, 1.0)  # in-plane Gaussian before comparing intensities (noise)
IN_PLANE = np.ones((1, 3, 3), bool)
OFF_SLICE_MM = 1e6  # a step across slices for a pull confined to its slice: exp(-1e6 / reach) is 0
# An exclude click confined to its slice reaches at most this fraction of the equivalent radius of the slice's mask: a
# reach set by the whole structure's size covers a small end slice and the cut then empties it.
SLICE_REACH_PER_RADIUS = 0.3


def click_influence(prob: np.ndarray, clicks_kji: np.ndarray, positive: np.ndarray, spacing_xyz,
                    influence_mm: float, exclude_axis: int | None = None,
                    exclude_influence_mm: float | None = None) -> np.ndarray:
    """Probability pulled towards each click's label: p' = p (1 - w) + label w, w = exp(-d / reach), with d the
    distance in mm to the nearest click (whose label wins) and reach ``influence_mm`` (``exclude_influence_mm`` for
    an exclude click, when given); an exclude click's d is infinite off its own slice along ``exclude_axis`` (when
    given), and there its reach is at most ``SLICE_REACH_PER_RADIUS`` of the slice mask's radius. Why: as hard disks
    alone, clicks on a region the model got wrong change only a few voxels."""
    reach = {True: float(influence_mm), False: float(influence_mm if exclude_influence_mm is None
                                                     else exclude_influence_mm)}
    if max(reach.values()) <= 0 or len(clicks_kji) == 0:
        return prob
    sampling = np.asarray(spacing_xyz, float)[::-1]
    distance = {}
    for label in (True, False):
        chosen = clicks_kji[np.asarray(positive, bool) == label]
        if len(chosen):
            seeds = np.ones(prob.shape, bool)
            seeds[tuple(chosen.T)] = False
            along = sampling.copy()
            if not label and exclude_axis is not None:
                along[exclude_axis] = OFF_SLICE_MM
            distance[label] = ndimage.distance_transform_edt(seeds, sampling=along)
    if len(distance) == 2:
        nearest = distance[True] <= distance[False]
        d = np.minimum(distance[True], distance[False])
    else:
        (label, d), = distance.items()
        nearest = np.full(prob.shape, label)
    reach_mm = np.where(nearest, reach[True], reach[False])
    if exclude_axis is not None and False in distance:
        reach_mm = np.where(nearest, reach_mm, slice_reach_mm(prob >= 0.5, exclude_axis, sampling, reach[False]))
    weight = np.where(reach_mm > 0, np.exp(-d / np.maximum(reach_mm, 1e-6)), 0.0).astype(np.float32)
    return (prob * (1 - weight) + nearest.astype(np.float32) * weight).astype(np.float32)


def slice_reach_mm(mask: np.ndarray, axis: int, sampling_kji, cap_mm: float) -> np.ndarray:
    """Per slice along ``axis``, an exclude click's reach (mm): ``SLICE_REACH_PER_RADIUS`` of the radius of a disk of
    the slice mask's area, at most ``cap_mm`` (``cap_mm`` on an empty slice); shaped to broadcast over the volume."""
    areas = np.moveaxis(np.asarray(mask, bool), axis, 0).sum(axis=(1, 2))
    pixel_mm2 = float(np.prod(np.delete(np.asarray(sampling_kji, float), axis)))
    radius_mm = np.sqrt(areas * pixel_mm2 / np.pi)
    reach = np.where(areas > 0, np.minimum(cap_mm, SLICE_REACH_PER_RADIUS * radius_mm), cap_mm)
    shape = [1, 1, 1]
    shape[axis] = -1
    return reach.reshape(shape)


def interior_values(image_smooth: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The smoothed intensities of the mask's deep voxels (eroded once in-plane; all of a thin mask), or None for a
    mask too small to tell."""
    deep = ndimage.binary_erosion(mask, structure=IN_PLANE)
    values = image_smooth[deep if deep.sum() >= 50 else mask]
    return values if values.size >= 20 else None


def robust_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 MAD (the standard deviation of a normal sample, robust to outliers) of ``values``."""
    median = float(np.median(values))
    return median, max(1.4826 * float(np.median(np.abs(values - median))), 1e-3)


def exclude_regions(prob: np.ndarray, image: np.ndarray, clicks_kji: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per exclude click on one distinct tissue that is not part of the structure, the voxels of that tissue connected
    to the click within the mask: smoothed intensity within half the tissue's distance to the structure's median of
    the click's, and at least ``REGION_SIGMAS`` from that median, where the mask (``prob >= 0.5``, dilated by one
    voxel in-plane) holds at least three voxels' width of them in-plane (not the blurred rim of the structure's own
    edge), unless an include click lies among them; their union (bool, the crop's shape)."""
    region = np.zeros(prob.shape, bool)
    clicks_kji, positive = np.asarray(clicks_kji).reshape(-1, 3), np.asarray(positive, bool)
    exclude, include = clicks_kji[~positive], clicks_kji[positive]
    mask = prob >= 0.5
    if not len(exclude) or not mask.any():
        return region
    image = np.asarray(image, np.float32)
    smooth = ndimage.gaussian_filter(image, SMOOTHING_VOX)
    interior = interior_values(smooth, mask)
    if interior is None:
        return region
    median, sigma = robust_spread(interior)
    allowed = None
    for k, j, i in exclude:
        near = _window(k, j, i, 2)
        clicked, spread = robust_spread(image[near])
        distance = abs(clicked - median)
        if distance < DISTINCT_SIGMAS * sigma or spread > MAX_SPREAD_FRACTION * distance:
            continue
        if np.mean(np.abs(interior - clicked) < distance / 2) >= MAX_INTERIOR_SHARE:
            continue
        like_click = (np.abs(smooth - clicked) < distance / 2) & (np.abs(smooth - median) > REGION_SIGMAS * sigma)
        if allowed is None:
            allowed = ndimage.binary_dilation(mask, structure=IN_PLANE)
        reach = allowed.copy()  # the mask, and the click's surroundings on its slice
        reach[_window(k, j, i, CLICK_REACH_VOX)] = True
        labels, _ = ndimage.label(like_click & reach)
        touched = np.unique(labels[near])
        taken = ndimage.binary_opening(np.isin(labels, touched[touched > 0]) & allowed, structure=IN_PLANE)
        if not taken[tuple(include.T)].any():  # an include click in that tissue says it belongs there
            region |= taken
    return region


def _window(k: int, j: int, i: int, half: int) -> tuple:
    """The in-plane square of ``2 * half + 1`` voxels around (k, j, i) on slice k, clipped at the crop's start."""
    return k, slice(max(j - half, 0), j + half + 1), slice(max(i - half, 0), i + half + 1)
