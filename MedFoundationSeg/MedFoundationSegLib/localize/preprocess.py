"""Bring any volume to MedLAM's working space: LAS, (z,y,x), 3 mm isotropic, intensities in [0,1], 32-voxel padding.

Unlike the reference (nibabel axis flips, then ``ndimage.zoom``), the volume is resampled once with SimpleITK onto an
axis-aligned LAS grid covering the same field of view. That handles flips, axis permutations and oblique directions
alike, never special-cases an input already at 3 mm (a reference crash), and keeps an exact affine between working
indices and LPS millimetres, so boxes map back to the original grid through physical space.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

from MedFoundationSegLib.core.volume import Volume, VolumeError, check_finite

log = logging.getLogger(__name__)

WORK_SPACING_MM = 3.0
PAD_VOXELS = 32
# LPS directions of the working grid's i (x), j (y), k (z) axes: Left, Anterior, Superior = LAS.
LAS_DIRECTION_LPS = np.diag([1.0, -1.0, 1.0])
HU_KNOTS = (-1000.0, -200.0, 200.0, 1500.0)
HU_VALUES = (0.0, 0.2, 0.8, 1.0)


class MRWarning(UserWarning):
    """MedLAM was trained on CT only; other modalities run but are out of distribution."""


def hu_to_unit(array_hu: np.ndarray) -> np.ndarray:
    """The reference's piecewise-linear CT map (Lei et al.): -1000->0, -200->0.2, 200->0.8, 1500->1, clamped."""
    return np.interp(array_hu, HU_KNOTS, HU_VALUES).astype(np.float32)


def percentile_to_unit(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """MR and other non-HU data: robust min-max to [0,1] between percentiles of the non-zero voxels."""
    values = array[array != 0] if np.any(array != 0) else array.ravel()
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros(array.shape, np.float32)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def guess_modality(array: np.ndarray) -> str:
    """'CT' for raw Hounsfield data (the reference's test: minimum below -10), 'unit' for data already in [0,1],
    otherwise 'MR' (anything else non-negative)."""
    lo, hi = float(array.min()), float(array.max())
    if lo < -10:
        return "CT"
    if lo >= 0 and hi <= 1.0 + 1e-6:
        return "unit"
    return "MR"


def normalise_intensity(array: np.ndarray, modality: str = "auto") -> tuple[np.ndarray, str]:
    modality = guess_modality(array) if modality == "auto" else modality.upper() if modality.lower() != "unit" else "unit"
    if modality == "CT":
        return hu_to_unit(array), "CT"
    if modality == "unit":
        warnings.warn("intensities already lie in [0,1]; assuming a pre-normalised CT and leaving them unchanged",
                      MRWarning, stacklevel=3)
        return array.astype(np.float32), "unit"
    if modality == "MR":
        warnings.warn("MedLAM was trained on CT only; this volume is not in Hounsfield units (MR?), so it gets a "
                      "percentile normalisation and results may be poor", MRWarning, stacklevel=3)
        return percentile_to_unit(array), "MR"
    raise ValueError(f"unknown modality {modality!r}; use 'auto', 'CT', 'MR' or 'unit'")


@dataclasses.dataclass
class WorkVolume:
    """A volume in MedLAM's working space; ``array`` is (z,y,x) = (S,A,L) at 3 mm, padded by ``pad`` voxels."""

    array: np.ndarray
    ijk_to_lps: np.ndarray  # 4x4 for indices (i,j,k) = (x,y,z) of the padded array
    pad: int
    spacing_mm: float
    modality: str
    source_shape_kji: tuple[int, int, int]
    source_ijk_to_lps: np.ndarray

    def lps_from_zyx(self, points_zyx: np.ndarray) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(points_zyx, float))[:, ::-1]
        return ijk @ self.ijk_to_lps[:3, :3].T + self.ijk_to_lps[:3, 3]

    def zyx_from_lps(self, points_lps: np.ndarray) -> np.ndarray:
        lps = np.atleast_2d(np.asarray(points_lps, float))
        ijk = (lps - self.ijk_to_lps[:3, 3]) @ np.linalg.inv(self.ijk_to_lps[:3, :3]).T
        return ijk[:, ::-1]

    @property
    def unpadded_shape(self) -> tuple[int, int, int]:
        return tuple(s - 2 * self.pad for s in self.array.shape)


def las_grid_for(volume: Volume, spacing_mm: float = WORK_SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """(origin_lps, size_xyz) of the LAS grid at ``spacing_mm`` covering the volume's whole field of view."""
    n = np.array(volume.shape_kji[::-1], float)
    corners_ijk = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                            for c in (-0.5, n[2] - 0.5)])
    corners_las = volume.lps_from_ijk(corners_ijk) @ LAS_DIRECTION_LPS  # LAS frame coords (x=L, y=A, z=S)
    lo, hi = corners_las.min(0), corners_las.max(0)
    size = np.maximum(1, np.round((hi - lo) / spacing_mm)).astype(int)
    centre = (lo + hi) / 2
    origin_las = centre - (size - 1) / 2 * spacing_mm
    return LAS_DIRECTION_LPS @ origin_las, size


def resample_to_las(volume: Volume, spacing_mm: float = WORK_SPACING_MM, interpolator: str = "linear",
                    default_value: float | None = None) -> Volume:
    """Resample onto the LAS grid of ``las_grid_for`` (SimpleITK, multi-threaded)."""
    import SimpleITK as sitk

    origin_lps, size = las_grid_for(volume, spacing_mm)
    image = volume.to_sitk()
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64) and interpolator != "nearest":
        image = sitk.Cast(image, sitk.sitkFloat32)
    interp = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    if interpolator not in interp:
        raise ValueError(f"unknown interpolator {interpolator!r}; use one of {sorted(interp)}")
    fill = float(volume.array.min()) if default_value is None else float(default_value)
    out = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), interp[interpolator],
                        tuple(float(o) for o in origin_lps), (spacing_mm,) * 3,
                        tuple(LAS_DIRECTION_LPS.ravel()), fill, image.GetPixelID())
    return Volume.from_sitk(out, name=volume.name)


MIN_VOXELS_PER_AXIS = 8  # below this the coarsest registration level has nothing left to match


def check_volume_3d(volume: Volume, what: str = "volume") -> None:
    """Refuse, with the reason, a volume localization cannot work on: 2D or tiny, or one value everywhere."""
    if min(volume.shape_kji) < MIN_VOXELS_PER_AXIS:
        raise VolumeError(f"{what} {volume.name!r} has shape {volume.shape_kji} (z,y,x): localization needs a 3D "
                          f"volume with at least {MIN_VOXELS_PER_AXIS} voxels along every axis")
    check_finite(volume, what)
    low, high = volume.array.min(), volume.array.max()
    if low == high:
        raise VolumeError(f"{what} {volume.name!r} holds the value {low} everywhere: an empty or blank image has "
                          "nothing to localize")


def preprocess(volume: Volume, modality: str = "auto", spacing_mm: float = WORK_SPACING_MM, pad: int = PAD_VOXELS,
               interpolator: str = "linear") -> WorkVolume:
    """Volume (any orientation, spacing, HU or MR) -> WorkVolume (LAS, 3 mm, [0,1], zero-padded)."""
    check_volume_3d(volume)
    resampled = resample_to_las(volume, spacing_mm, interpolator)
    unit, modality = normalise_intensity(resampled.array.astype(np.float32, copy=False), modality)
    padded = np.pad(unit, pad, mode="constant", constant_values=0.0)
    ijk_to_lps = resampled.ijk_to_lps.copy()
    ijk_to_lps[:3, 3] -= ijk_to_lps[:3, :3] @ np.full(3, float(pad))
    return WorkVolume(array=padded, ijk_to_lps=ijk_to_lps, pad=pad, spacing_mm=spacing_mm, modality=modality,
                      source_shape_kji=volume.shape_kji, source_ijk_to_lps=volume.ijk_to_lps.copy())


# --- axis-exact reorientation of label arrays (no interpolation) ---------------------------------------------------
def las_axis_map(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each LAS axis (z,y,x order), which array axis (0..2 of a (k,j,i) array) runs along it and whether it is
    flipped. Oblique directions snap to the nearest axis (like nibabel's io_orientation)."""
    las_cols = LAS_DIRECTION_LPS @ np.asarray(direction, float)  # LAS frame components of the i, j, k directions
    owner = np.argmax(np.abs(las_cols), axis=0)  # owner[i] = LAS axis (0=x,1=y,2=z) of index axis i
    if len(set(owner.tolist())) != 3:
        raise VolumeError(f"direction matrix {np.round(direction, 3).tolist()} is degenerate (two index axes "
                          "point along the same anatomical axis)")
    array_axis_for_las_zyx = np.empty(3, int)
    flip = np.empty(3, bool)
    for index_axis in range(3):
        las_axis = owner[index_axis]
        zyx_pos = 2 - las_axis
        array_axis_for_las_zyx[zyx_pos] = 2 - index_axis  # index axis i (x) is array axis 2
        flip[zyx_pos] = las_cols[las_axis, index_axis] < 0
    return array_axis_for_las_zyx, flip


def to_las_view(array_kji: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The array permuted/flipped so its axes run S, A, L (z,y,x of LAS), without resampling."""
    axes, flip = las_axis_map(direction)
    view = np.transpose(array_kji, axes)
    return view[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]


def kji_from_las_view(points_zyx: np.ndarray, shape_kji: tuple[int, int, int], direction: np.ndarray) -> np.ndarray:
    """Map (N,3) indices of ``to_las_view`` back to (k,j,i) indices of the original array."""
    axes, flip = las_axis_map(direction)
    points = np.atleast_2d(np.asarray(points_zyx, float)).copy()
    view_shape = np.array(shape_kji)[axes]
    for a in range(3):
        if flip[a]:
            points[:, a] = view_shape[a] - 1 - points[:, a]
    out = np.empty_like(points)
    out[:, axes] = points
    return out
