"""A structure's shape learned across a dataset: the masks a user signed, mapped into their box and averaged.

Why: the model sees one slice at a time and knows nothing of the structure's shape; a structure's shape varies little
between the volumes of a dataset once its box is known. Each signed mask is resampled onto a fixed grid spanning its
box grown by ``CONTEXT`` of the box's size per side (box coordinates, so the box fixes position and scale); the mean of
those grids, mapped into the next volume's box, is the share of earlier volumes holding each voxel. Added to the
model's evidence before the graph cut, it fills what the model missed where earlier volumes agree.

Arrays are (k, j, i) volumes; boxes are ((i0, j0, k0), (i1, j1, k1)) inclusive voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GRID_KJI = (16, 40, 40)
CONTEXT = 0.5  # the grid spans the box grown by this share of its size on every side
# The blend adds the shape's log-odds to the model's, times PRIOR_GAIN * n / (n + 1) after n signed volumes (one earlier
# volume counts for less than several); the shape's share is taken within [SURE, 1 - SURE], so no number of volumes
# makes a voxel certain.
PRIOR_GAIN = 2.0
SURE = 0.05


def grid_frame(box_ijk, grid_kji=GRID_KJI) -> tuple[np.ndarray, np.ndarray]:
    """(origin_kji, step_kji): voxel position of the grid's first node and the voxels between nodes."""
    lo, hi = np.asarray(box_ijk, float)[:, ::-1]
    size = hi - lo + 1
    origin = lo - 0.5 - CONTEXT * size  # the box's outer faces, grown
    step = size * (1 + 2 * CONTEXT) / np.array(grid_kji)
    return origin + step / 2, step


def grid_extent(box_ijk, shape_kji, grid_kji=GRID_KJI) -> tuple[slice, ...]:
    """The voxels of a volume of ``shape_kji`` the grid of ``box_ijk`` spans (the work stays near the structure)."""
    origin, step = grid_frame(box_ijk, grid_kji)
    lo = np.clip(np.floor(origin - step).astype(int), 0, np.array(shape_kji))  # one node more: the filter's reach
    hi = np.clip(np.ceil(origin + step * np.array(grid_kji)).astype(int) + 1, 0, np.array(shape_kji))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def to_box_grid(values_kji: np.ndarray, box_ijk, grid_kji=GRID_KJI) -> np.ndarray:
    """A mask's occupancy (or an image's mean value) on the box grid, float32; nodes outside the volume count 0."""
    grid = block_mean_grid(values_kji, box_ijk, grid_kji)
    origin, step = grid_frame(box_ijk, grid_kji)
    for axis, (start, n) in enumerate(zip(origin, np.shape(values_kji))):
        node = start + step[axis] * np.arange(grid_kji[axis])
        outside = (node < -0.5) | (node > n - 0.5)
        grid[(slice(None),) * axis + (outside,)] = 0.0
    return grid


def block_mean_grid(values_kji: np.ndarray, box_ijk, grid_kji) -> np.ndarray:
    """``values_kji`` on the grid of ``box_ijk`` (float32): block means of the crop the grid spans, one block per node
    step, then linear interpolation between the blocks' centres (the volume's edge values beyond it). Why: one pass
    over the crop, where a box filter is one pass per voxel of its window; a click on a large organ rebuilds the
    grids of the head it hands back."""
    origin, step = grid_frame(box_ijk, grid_kji)
    region = grid_extent(box_ijk, np.shape(values_kji), grid_kji)
    lo = np.array([s.start for s in region])
    crop = np.asarray(values_kji[region], np.float32)
    if crop.size == 0:
        return np.zeros(grid_kji, np.float32)
    block = np.maximum(np.floor(step), 1).astype(int)
    crop = crop[tuple(slice(0, n - n % b or n) for n, b in zip(crop.shape, block))]
    blocks = crop.reshape(*[x for n, b in zip(crop.shape, block) for x in (n // b, b)]).mean(axis=(1, 3, 5))
    # a block's mean sits at its centre: grid node -> crop voxel -> block index
    return ndimage.affine_transform(blocks, step / block, (origin - lo - (block - 1) / 2) / block,
                                    output_shape=grid_kji, order=1, mode="nearest").astype(np.float32)


def from_box_grid(grid: np.ndarray, box_ijk, shape_kji) -> np.ndarray:
    """The grid (any size) mapped into a volume of ``shape_kji`` by its box (float32; 0 beyond the grid)."""
    origin, step = grid_frame(box_ijk, np.shape(grid))
    region = grid_extent(box_ijk, shape_kji, np.shape(grid))
    out = np.zeros(tuple(shape_kji), np.float32)
    size = tuple(s.stop - s.start for s in region)
    if 0 in size:
        return out
    start = np.array([s.start for s in region])
    out[region] = ndimage.affine_transform(np.asarray(grid, np.float32), 1 / step, (start - origin) / step,
                                           output_shape=size, order=1, mode="constant", cval=0.0)
    return out


def updated(grid: np.ndarray | None, volumes: int, mask_kji: np.ndarray, box_ijk) -> np.ndarray:
    """The mean grid after one more signed mask (``grid`` averaged over ``volumes`` masks, or None)."""
    new = to_box_grid(mask_kji, box_ijk)
    if grid is None or volumes <= 0:
        return new
    return ((np.asarray(grid, np.float32) * volumes + new) / (volumes + 1)).astype(np.float32)


def blend(probability_kji: np.ndarray, grid: np.ndarray, volumes: int, box_ijk) -> np.ndarray:
    """The model's probability with the shape of ``volumes`` earlier volumes, mapped into this box, as further evidence:
    their log-odds added (a product of experts), so the shape decides where the model is unsure and the model where it
    is sure."""
    prior = SURE + (1 - 2 * SURE) * from_box_grid(grid, box_ijk, np.shape(probability_kji))
    model = np.clip(np.asarray(probability_kji, np.float32), 1e-3, 1 - 1e-3)
    log_odds = np.log(model / (1 - model)) + PRIOR_GAIN * volumes / (volumes + 1) * np.log(prior / (1 - prior))
    return (1 / (1 + np.exp(-log_odds))).astype(np.float32)
