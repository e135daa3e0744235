"""A 3D image with its physical geometry, the one currency every engine step exchanges.

Conventions (fixed here, once):
- ``array`` is indexed (k, j, i) = (z, y, x), as ``SimpleITK.GetArrayFromImage`` returns it.
- Physical points are LPS millimetres (SimpleITK/DICOM). Slicer's RAS is converted at the Slicer boundary only.
- ``direction`` is a 3x3 matrix whose columns are the LPS directions of the i, j, k index axes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from MedFoundationSegLib.core.nifti_check import NiftiError, check_nifti, is_nifti

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Direction cosines this close to 0 or ±1 are taken as exactly that: a file stores spacing times direction, and
# reading it back divides by the norm, so an axis-aligned volume comes back with 0.9999999999999999. Registration
# (the localizer) follows such a difference to a different box, so the same scan read from a file or held in memory
# would be annotated differently.
AXIS_ALIGNED_TOLERANCE = 1e-9


class VolumeError(ValueError):
    """A volume could not be read or is not usable (names the file and the problem)."""


@dataclasses.dataclass
class Volume:
    array: np.ndarray
    spacing_mm: tuple[float, float, float]  # along i, j, k (x, y, z)
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    name: str = ""
    # A stable identity of these voxels chosen by whoever made the volume (the Slicer Logic: node ID + the image's
    # modification time), so the engine can keep slice embeddings across actions; None = identified by content.
    key: str | None = dataclasses.field(default=None, compare=False)
    # The digest of the voxels, once ``identity`` has computed it (a volume's voxels are not changed in place).
    _digest: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise VolumeError(f"volume {self.name!r} must be 3D (z, y, x); got shape {self.array.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
        if len(self.spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise VolumeError(f"volume {self.name!r} has invalid spacing {self.spacing_mm}; need 3 positive values")
        self.origin_lps_mm = tuple(float(o) for o in self.origin_lps_mm)
        self.direction = axis_snapped(np.asarray(self.direction, dtype=float).reshape(3, 3))

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def identity(self) -> str:
        """``key`` or a digest of the voxels (shape and type included, computed once per Volume): what the engine
        keeps per volume is kept under it, so a fresh copy of the same voxels finds it."""
        if self.key:
            return self.key
        if self._digest is None:
            array = np.ascontiguousarray(self.array)
            digest = hashlib.blake2b(memoryview(array).cast("B"), digest_size=16).hexdigest()
            self._digest = f"voxels:{array.dtype.str}:{array.shape}:{digest}"
        return self._digest

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing_mm)
        matrix[:3, 3] = self.origin_lps_mm
        return matrix

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices to RAS millimetres (what Slicer's IJKToRAS holds)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.ijk_to_lps

    def lps_from_ijk(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous voxel indices (i, j, k) -> (N, 3) LPS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.ijk_to_lps[:3, :3].T + self.ijk_to_lps[:3, 3]

    def ijk_from_lps(self, lps_mm: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm -> (N, 3) continuous voxel indices (i, j, k)."""
        lps_mm = np.atleast_2d(np.asarray(lps_mm, dtype=float))
        return (lps_mm - self.ijk_to_lps[:3, 3]) @ np.linalg.inv(self.ijk_to_lps[:3, :3]).T

    def contains_ijk(self, ijk: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """True where continuous indices lie inside the voxel grid (voxel centres +- half a voxel)."""
        ijk = np.atleast_2d(ijk)
        upper = np.array(self.shape_kji[::-1], dtype=float) - 1 + margin
        return np.all((ijk >= -margin) & (ijk <= upper), axis=1)

    def with_array(self, array: np.ndarray, name: str | None = None) -> "Volume":
        """Same geometry, other voxels (a label map, a probability map)."""
        if np.shape(array) != self.array.shape:
            raise VolumeError(f"array shape {np.shape(array)} does not match volume shape {self.array.shape}")
        return dataclasses.replace(self, array=np.asarray(array), name=self.name if name is None else name, key=None)

    # --- SimpleITK bridge -------------------------------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps_mm)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image, name: str = "") -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise VolumeError(f"{name or 'image'} is {image.GetDimension()}D; a 3D volume is needed")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeError(f"{name or 'image'} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                              "a scalar volume is needed")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_mm=image.GetSpacing(),
            origin_lps_mm=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            name=name,
        )


def axis_snapped(direction: np.ndarray) -> np.ndarray:
    """``direction`` with every cosine within ``AXIS_ALIGNED_TOLERANCE`` of 0, 1 or -1 set to it; an oblique
    direction keeps its other cosines as they are."""
    nearest = np.round(direction)
    return np.where(np.abs(direction - nearest) < AXIS_ALIGNED_TOLERANCE, nearest, direction)


def check_finite(volume: Volume, what: str = "volume") -> None:
    """Refuse NaN or infinite voxels (a float image from any source), naming how many there are."""
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise VolumeError(f"{what} {volume.name!r} contains {bad} NaN or infinite voxel values; replace them "
                              "(for example with the background value) first")


def read_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read any 3D scalar image SimpleITK reads (NIfTI, NRRD, MHA, ...), a DICOM series (a DicomSeries from
    ``find_series``), or a folder holding one DICOM image series."""
    import SimpleITK as sitk

    from MedFoundationSegLib.core.dicom_series import DicomError, DicomSeries, find_series, read_series_image

    series = path if isinstance(path, DicomSeries) else None
    path = Path(path)
    name = name or (series.name if series is not None else path.name.split(".")[0])
    if not path.exists():
        raise VolumeError(f"volume file not found: {path}")
    try:
        if series is None and path.is_dir():
            found, _ = find_series(path)
            if not found:
                raise VolumeError(f"{path} is a folder without a DICOM image series")
            if len(found) > 1:
                raise VolumeError(f"{path} holds {len(found)} DICOM image series; give one series' folder, or the "
                                  "folder to --queries to run each")
            series = found[0]
        if series is not None:
            image = read_series_image(series)
        else:
            if is_nifti(path):
                check_nifti(path)
            image = sitk.ReadImage(str(path))
    except (NiftiError, DicomError) as error:
        raise VolumeError(str(error)) from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise VolumeError(f"cannot read {series or path} as an image: {first_line}") from None
    volume = Volume.from_sitk(image, name=name)
    check_finite(volume, str(series or path))
    return volume


def write_volume(volume: Volume, path: str | os.PathLike, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write atomically (temporary file + rename); refuses to replace an existing file unless ``overwrite``."""
    import SimpleITK as sitk

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") or path.name.endswith(".seg.nrrd") \
        else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
