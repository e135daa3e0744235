"""The one box and slice vocabulary of the engine.

- A 3D box is an inclusive voxel index range ``box_ijk = [[i0, j0, k0], [i1, j1, k1]]`` (int array (2, 3)); the same
  box in millimetres is ``box_lps_mm`` / ``bounds_ras`` ((2, 3): min corner, max corner).
- A slice frame is what a 2D model sees along one axis: the (z, y, x) array's axis held fixed, and which index axes
  become the slice's columns (x) and rows (y). ``SLICE_FRAMES[axis]`` holds it for "axial", "coronal", "sagittal".
- In a slice frame a 3D box becomes ``SliceBox(first, last, rows, cols)`` and a 2D prompt ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core.volume import LPS_TO_RAS, Volume


@dataclasses.dataclass(frozen=True)
class SliceFrame:
    array_axis: int  # axis of the (z, y, x) array held fixed
    ijk_axis: int  # the same axis as an index into (i, j, k)
    x_ijk: int  # (i, j, k) axis that runs along the slice's columns
    y_ijk: int  # ... and along its rows


SLICE_FRAMES = {"axial": SliceFrame(0, 2, 0, 1), "coronal": SliceFrame(1, 1, 0, 2),
                "sagittal": SliceFrame(2, 0, 1, 2)}


@dataclasses.dataclass(frozen=True)
class SliceBox:
    """A 3D box in a slice frame: slice range and the row / column range on every slice (all inclusive)."""

    first: int
    last: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.cols[0], self.rows[0], self.cols[1], self.rows[1]

    def as_tuple(self):
        """((first, last), (row0, row1), (col0, col1)): the form the propagation functions take."""
        return (self.first, self.last), self.rows, self.cols


def slice_frame(axis: str) -> SliceFrame:
    if axis not in SLICE_FRAMES:
        raise ValueError(f"unknown slice axis {axis!r}; use one of {', '.join(SLICE_FRAMES)}")
    return SLICE_FRAMES[axis]


THICK_SLICE_RATIO = 2.0  # slices at least this many times thicker than their pixels are thick


def thick_slice_axis(spacing_xyz_mm, axis: str) -> int | None:
    """The (z, y, x) array axis of ``axis`` when its slices are thick (THICK_SLICE_RATIO), else None. On thick
    slices the next slice is another cross-section of the anatomy, not nearly the same one."""
    frame = slice_frame(axis)
    spacing = np.asarray(spacing_xyz_mm, float)
    thick = spacing[frame.ijk_axis] >= THICK_SLICE_RATIO * max(spacing[frame.x_ijk], spacing[frame.y_ijk])
    return frame.array_axis if thick else None


def to_slices(array_kji: np.ndarray, axis: str) -> np.ndarray:
    """(z, y, x) -> (slice, row, column) for ``axis``: a view, matching the predictor's slice frames."""
    return np.moveaxis(array_kji, slice_frame(axis).array_axis, 0)


def from_slices(array: np.ndarray, axis: str) -> np.ndarray:
    return np.moveaxis(array, 0, slice_frame(axis).array_axis)


def check_box_ijk(volume: Volume, box_ijk) -> np.ndarray:
    """An inclusive ijk box clipped to the volume; refuses a malformed box or one that misses the volume."""
    box_ijk = np.asarray(box_ijk, int)
    upper = np.array(volume.shape_kji[::-1]) - 1
    if box_ijk.shape != (2, 3) or np.any(box_ijk[0] > box_ijk[1]):
        raise ValueError(f"a box is [[i0, j0, k0], [i1, j1, k1]] with lo <= hi; got {box_ijk.tolist()}")
    if np.any(box_ijk[1] < 0) or np.any(box_ijk[0] > upper):
        raise ValueError(f"the box {box_ijk.tolist()} lies outside the volume (ijk 0..{upper.tolist()})")
    return np.clip(box_ijk, 0, upper)


def slice_box(box_ijk, axis: str) -> SliceBox:
    frame = slice_frame(axis)
    box_ijk = np.asarray(box_ijk, int)
    return SliceBox(int(box_ijk[0, frame.ijk_axis]), int(box_ijk[1, frame.ijk_axis]),
                    (int(box_ijk[0, frame.y_ijk]), int(box_ijk[1, frame.y_ijk])),
                    (int(box_ijk[0, frame.x_ijk]), int(box_ijk[1, frame.x_ijk])))


def box_holding_clicks_ijk(box_ijk, clicks_ijk, axis: str, shape_kji, min_margin_vox: int = 3) -> np.ndarray:
    """``box_ijk`` grown to hold every include click outside it: in the slice, past the click by as much again as the
    click lies beyond the box's edge (at least ``min_margin_vox``); along the slice axis, to the click's slice. Why: an
    include click outside the box says the structure goes on beyond it, and the click marks the middle of what was
    missed; a box that stays a hard limit would keep the correction from reaching there."""
    box_ijk = np.asarray(box_ijk, int)
    box = box_ijk.copy()
    frame = slice_frame(axis)
    for point in np.asarray(clicks_ijk, int).reshape(-1, 3):
        below, above = point < box_ijk[0], point > box_ijk[1]
        for a in (frame.x_ijk, frame.y_ijk):
            if below[a]:
                box[0, a] = min(box[0, a], point[a] - max(box_ijk[0, a] - point[a], min_margin_vox))
            if above[a]:
                box[1, a] = max(box[1, a], point[a] + max(point[a] - box_ijk[1, a], min_margin_vox))
        box[0, frame.ijk_axis] = min(box[0, frame.ijk_axis], point[frame.ijk_axis])
        box[1, frame.ijk_axis] = max(box[1, frame.ijk_axis], point[frame.ijk_axis])
    return np.clip(box, 0, np.array(shape_kji[::-1]) - 1)


def box_holding_slices_ijk(box_ijk, mask_kji: np.ndarray, axis: str) -> np.ndarray:
    """``box_ijk`` whose slice range along ``axis`` is grown to hold every slice ``mask_kji`` fills: a cut that keeps
    to the box's slices then never takes away a slice the user sees."""
    box, frame = np.array(box_ijk, int), slice_frame(axis)
    filled = np.flatnonzero(to_slices(np.asarray(mask_kji, bool), axis).any(axis=(1, 2)))
    if len(filled):
        box[0, frame.ijk_axis] = min(box[0, frame.ijk_axis], int(filled[0]))
        box[1, frame.ijk_axis] = max(box[1, frame.ijk_axis], int(filled[-1]))
    return box


def equivalent_radius_mm(mask_kji: np.ndarray, spacing_xyz_mm) -> float:
    """The radius of the sphere holding as much as ``mask_kji`` (mm): a structure's size in one number."""
    volume_mm3 = float(np.count_nonzero(mask_kji)) * float(np.prod(np.asarray(spacing_xyz_mm, float)))
    return (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)


def box_kji(box_ijk) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """((k0, k1), (j0, j1), (i0, i1)): the box as ranges of the (z, y, x) array (refinement's form)."""
    box_ijk = np.asarray(box_ijk, int)
    return tuple((int(box_ijk[0][a]), int(box_ijk[1][a])) for a in (2, 1, 0))


def ras_from_lps(points_lps: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(points_lps, float)) @ LPS_TO_RAS.T


lps_from_ras = ras_from_lps  # the flip is its own inverse


def ijk_box_from_ras_bounds(volume: Volume, bounds_ras: np.ndarray, clip: bool = True) -> np.ndarray:
    """Inclusive ijk box of the voxels whose centres lie in an RAS box; raises if it misses the volume."""
    lo, hi = np.asarray(bounds_ras, float)
    corners_ras = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = volume.ijk_from_lps(lps_from_ras(corners_ras))
    box = np.stack([np.ceil(ijk.min(0) - 1e-3), np.floor(ijk.max(0) + 1e-3)]).astype(int)
    upper = np.array(volume.shape_kji[::-1]) - 1
    if np.any(box[1] < 0) or np.any(box[0] > upper):
        raise ValueError(f"the box {np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} (RAS mm) lies outside "
                         f"the volume {volume.name!r}")
    return np.clip(box, 0, upper) if clip else box


def ras_bounds_from_ijk_box(volume: Volume, box_ijk: np.ndarray) -> np.ndarray:
    """(2, 3) RAS bounds enclosing the voxels of an inclusive ijk box (outer voxel faces, not centres)."""
    lo, hi = np.asarray(box_ijk, float)
    corners = np.array([[i, j, k] for i in (lo[0] - 0.5, hi[0] + 0.5) for j in (lo[1] - 0.5, hi[1] + 0.5)
                        for k in (lo[2] - 0.5, hi[2] + 0.5)])
    ras = ras_from_lps(volume.lps_from_ijk(corners))
    return np.stack([ras.min(0), ras.max(0)])
