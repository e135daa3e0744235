"""DICOM image series as volumes: found in a folder tree, named without patient data, checked before reading.

A folder may hold one series, several series side by side, or a whole export of many patients and studies. Each
image series becomes one query; series that hold no image volume (SEG, RTSTRUCT, SR, ...) are skipped with a note.
Multi-frame files and series with missing slices are refused with the reason. SimpleITK (GDCM) reads the headers
and the voxels; orientation, spacing and rescale slope/intercept come from the headers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "OT"}
TAGS = {"modality": "0008|0060", "series_uid": "0020|000e", "study_uid": "0020|000d", "patient_id": "0010|0020",
        "series_number": "0020|0011", "frames": "0028|0008", "position": "0020|0032", "orientation": "0020|0037"}


class DicomError(ValueError):
    """A DICOM series cannot be used as a volume (names the series and the reason)."""


def _key(text: str, length: int = 8) -> str:
    """A short stable hash: tells patients and studies apart in names without showing their identifiers."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class DicomSeries:
    folder: Path
    files: tuple[Path, ...]
    series_uid: str
    study_uid: str
    patient_key: str  # hash of the patient ID, never the ID itself
    series_number: str
    modality: str

    @property
    def name(self) -> str:
        """Case name: patient, study and series, with no header text that identifies the patient."""
        number = self.series_number or _key(self.series_uid, 6)
        return f"p{self.patient_key}_st{_key(self.study_uid, 6)}_se{number}"

    def __str__(self) -> str:
        return f"{self.folder} (DICOM series {self.series_uid})"

    def __fspath__(self) -> str:  # a DicomSeries goes wherever a volume path goes
        return str(self.folder)


def _header(path: Path) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {name: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
            for name, tag in TAGS.items()}


def find_series(root: str | os.PathLike) -> tuple[list[DicomSeries], list[str]]:
    """Every image series under ``root`` (sorted by name) and a note per series skipped."""
    import SimpleITK as sitk

    root = Path(root)
    series, notes = [], []
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if not files:
                continue
            header = _header(files[0])
            if header["modality"].upper() in NON_IMAGE_MODALITIES:
                notes.append(f"skipped {folder}: series {uid} is {header['modality']}, not an image volume")
                continue
            series.append(DicomSeries(folder, files, uid, header["study_uid"], _key(header["patient_id"]),
                                      header["series_number"], header["modality"]))
    return sorted(series, key=lambda s: s.name), notes


def check_series(series: DicomSeries) -> None:
    """Refuse a series that is not one stack of single-frame slices at even spacing."""
    if len(series.files) < 2:
        raise DicomError(f"{series} has {len(series.files)} slice; a volume needs a stack of slices")
    headers = [_header(path) for path in series.files]
    if any(h["frames"] not in ("", "1") for h in headers):
        raise DicomError(f"{series} is multi-frame ({headers[0]['frames']} frames in a file); convert it to a "
                         "single-frame series or a NIfTI/NRRD file first")
    orientation = np.array([float(v) for v in headers[0]["orientation"].split("\\")]) if headers[0]["orientation"] \
        else np.array([1.0, 0, 0, 0, 1, 0])
    normal = np.cross(orientation[:3], orientation[3:])
    try:
        depth = sorted(float(np.dot(normal, [float(v) for v in h["position"].split("\\")])) for h in headers)
    except ValueError:
        raise DicomError(f"{series} has slices without a position (ImagePositionPatient)") from None
    steps = np.diff(depth)
    if np.any(steps <= 1e-3):
        raise DicomError(f"{series} has two slices at the same position; it mixes several stacks")
    if steps.max() > 1.5 * np.median(steps):
        gap = int(np.argmax(steps))
        raise DicomError(f"{series} misses slice(s): {steps.max():.2f} mm between positions {depth[gap]:.2f} and "
                         f"{depth[gap + 1]:.2f} mm where the others are {np.median(steps):.2f} mm apart")


def read_series_image(series: DicomSeries):
    """The series as a SimpleITK image (rescale applied, geometry from the headers), after check_series."""
    import SimpleITK as sitk

    check_series(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    return reader.Execute()
