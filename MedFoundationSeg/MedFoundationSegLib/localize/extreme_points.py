"""A structure's 6 extreme points (and its SPL slabs' points) from its mask, by the reference's rule: the median
raster pixel on each extreme slice, computed on the original grid viewed in LAS order (no resampling error)."""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core.boxes import REF_TO_LPS
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.preprocess import kji_from_las_view, las_axis_map, to_las_view

MAX_SLABS = 6


class TemplateError(ValueError):
    """A template or template set is unusable (names the file, template and structure)."""


# --- extreme points from a mask (reference rule) -------------------------------------------------------------------
def _median_raster_pixel(plane: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(plane)
    if len(rows) == 0:
        return None
    mid = len(rows) // 2
    return np.array([rows[mid], cols[mid]])


def _point_on_bound(mask_zyx: np.ndarray, axis: int, coord: int, search_forward: bool = False) -> np.ndarray:
    """The reference's point for one wall: the median raster pixel of the mask's slice at ``coord`` on ``axis``.

    Slices are laid out as the reference does: axis 0 -> [y, x], axis 1 -> [x, z], axis 2 -> [z, y]. With
    ``search_forward`` an empty slice is replaced by the next non-empty one (bounded), keeping ``coord``.
    """
    n = mask_zyx.shape[axis]
    probe = coord
    while True:
        if axis == 0:
            plane = mask_zyx[probe]
        elif axis == 1:
            plane = mask_zyx[:, probe, :].T
        else:
            plane = mask_zyx[:, :, probe]
        pixel = _median_raster_pixel(plane)
        if pixel is not None or not search_forward:
            break
        probe = probe + 1 if probe + 1 < n else None
        if probe is None:  # nothing further on: look backwards instead (the reference would crash here)
            for back in range(coord - 1, -1, -1):
                return _point_on_bound(mask_zyx, axis, back)
            raise TemplateError("empty mask")
    if pixel is None:
        raise TemplateError(f"mask slice {coord} on axis {axis} is empty")
    if axis == 0:
        return np.array([coord, pixel[0], pixel[1]])
    if axis == 1:
        return np.array([pixel[1], coord, pixel[0]])
    return np.array([pixel[0], pixel[1], coord])


def extreme_points_zyx(mask_zyx: np.ndarray, bounds: np.ndarray | None = None, whole_mask: np.ndarray | None = None
                       ) -> np.ndarray:
    """(6,3) points in the reference order [zmin, ymin, xmin, zmax, ymax, xmax] of a LAS-ordered (z,y,x) mask.

    ``bounds`` (2,3) overrides the bounds (SPL slabs), and the points are then taken from ``whole_mask``.
    """
    mask = np.asarray(mask_zyx, bool)
    if not mask.any():
        raise TemplateError("the structure's mask is empty")
    if bounds is None:
        nz = [np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
        bounds = np.array([[v[0] for v in nz], [v[-1] for v in nz]])
    source = mask if whole_mask is None else np.asarray(whole_mask, bool)
    return np.array([_point_on_bound(source, a, int(bounds[b][a]), search_forward=whole_mask is not None)
                     for b in (0, 1) for a in range(3)], float)


def split_count(z_extent_mm: float, slice_interval: int = 2, work_spacing_mm: float = 3.0) -> int:
    """SPL slab count: min(Lz // interval, 6) when the extent Lz (in 3 mm voxels) exceeds the interval, else 1."""
    lz = int(z_extent_mm // work_spacing_mm)
    if slice_interval < 1:
        raise ValueError(f"slice_interval must be >= 1; got {slice_interval}")
    return min(lz // slice_interval, MAX_SLABS) if lz > slice_interval else 1


def slab_points_zyx(mask_zyx: np.ndarray, split_num: int) -> list[np.ndarray]:
    """SPL: cut the mask's z-range into ``split_num`` slabs; 6 reference-ordered points per slab.

    Fixes the reference: an empty slab takes the whole-structure y/x bounds instead of crashing or silently reusing
    the previous slab, and the empty-slice walk is bounded.
    """
    mask = np.asarray(mask_zyx, bool)
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    zmin, zmax = int(zs[0]), int(zs[-1])
    split_num = max(1, min(int(split_num), zmax - zmin + 1))
    step = max(1, (zmax - zmin) // split_num)
    out = []
    whole_y = np.nonzero(mask.any(axis=(0, 2)))[0]
    whole_x = np.nonzero(mask.any(axis=(0, 1)))[0]
    for i in range(split_num):
        start = zmin + i * step
        end = zmax if i == split_num - 1 else start + step
        part = mask[start:end + 1]
        ys = np.nonzero(part.any(axis=(0, 2)))[0]
        xs = np.nonzero(part.any(axis=(0, 1)))[0]
        if len(ys) == 0:
            ys, xs = whole_y, whole_x
        bounds = np.array([[start, ys[0], xs[0]], [end, ys[-1], xs[-1]]])
        out.append(extreme_points_zyx(mask, bounds=bounds, whole_mask=mask))
    return out


def _view_points_to_lps(points_zyx: np.ndarray, labels: Volume) -> np.ndarray:
    kji = kji_from_las_view(points_zyx, labels.shape_kji, labels.direction)
    return labels.lps_from_ijk(kji[:, ::-1])


def structure_points_from_mask(labels: Volume, mask_kji: np.ndarray) -> np.ndarray:
    """(6,3) LPS extreme points (POINT_NAMES order) of a boolean mask on the labels' grid."""
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    ref = extreme_points_zyx(view)
    return _view_points_to_lps(ref, labels)[REF_TO_LPS]


def slab_points_from_mask(labels: Volume, mask_kji: np.ndarray, split_num: int) -> list[np.ndarray]:
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    return [_view_points_to_lps(ref, labels)[REF_TO_LPS] for ref in slab_points_zyx(view, split_num)]


def z_extent_mm(labels: Volume, mask_kji: np.ndarray) -> float:
    """Superior-inferior extent of a mask between its extreme voxel centres, in mm (on the LAS view)."""
    axes, _ = las_axis_map(labels.direction)
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    zs = np.nonzero(view.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return 0.0
    spacing_z = labels.spacing_mm[2 - axes[0]]  # array axis a is index axis 2 - a
    return float((zs[-1] - zs[0]) * spacing_z)
