"""Removing the exterior background from a mask: the dark region (air around a body, background around a head)
that reaches beyond the prompt box belongs to no structure.

Large boxes hold things that are not the structure (a table, a head holder) and a model may take box, holder and
the air between them as one object. Cutting the exterior background away separates them; the parts that remain
much smaller than the largest are dropped. Dark regions enclosed by the structure (lungs, bowel gas) never reach
outside the box, so they stay.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def exterior_background(image_kji: np.ndarray, box_ijk: np.ndarray, dark_below: float,
                        margin_vox: int = 8) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Dark voxels connected to the border of the box grown by ``margin_vox`` (clipped to the volume), as a mask of
    that grown region, and the region's slices."""
    (i0, j0, k0), (i1, j1, k1) = np.asarray(box_ijk, int)
    nz, ny, nx = image_kji.shape
    region = (slice(max(k0 - margin_vox, 0), min(k1 + margin_vox, nz - 1) + 1),
              slice(max(j0 - margin_vox, 0), min(j1 + margin_vox, ny - 1) + 1),
              slice(max(i0 - margin_vox, 0), min(i1 + margin_vox, nx - 1) + 1))
    dark = image_kji[region] < dark_below
    labels, count = ndimage.label(dark)
    if count == 0:
        return dark, region
    border = np.zeros(dark.shape, bool)
    for axis, n in enumerate(dark.shape):  # only the in-plane sides: slabs above and below are the structure's own
        if axis == 0:
            continue
        index = [slice(None)] * 3
        index[axis] = [0, n - 1]
        border[tuple(index)] = True
    touching = np.unique(labels[border & dark])
    return np.isin(labels, touching[touching > 0]), region


def drop_exterior_background(image_kji: np.ndarray, mask_kji: np.ndarray, box_ijk: np.ndarray, dark_below: float,
                             keep_fraction: float = 0.2) -> tuple[np.ndarray, int]:
    """``mask_kji`` without the exterior background and without the parts left much smaller than the largest;
    returns the new mask and the number of voxels removed."""
    exterior, region = exterior_background(image_kji, box_ijk, dark_below)
    if not exterior.any():
        return mask_kji, 0
    inside = mask_kji[region] & ~exterior
    labels, count = ndimage.label(inside)
    if count > 1:
        sizes = ndimage.sum(inside, labels, range(1, count + 1))
        inside = np.isin(labels, 1 + np.flatnonzero(sizes >= keep_fraction * sizes.max()))
    out = np.zeros_like(mask_kji)
    out[region] = inside
    return out, int(mask_kji.sum() - out.sum())
