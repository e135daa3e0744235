"""Finding volume files: a folder of volumes (and DICOM series folders), a text list or a CSV of paths."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = ("", ".dcm", ".ima")
log = logging.getLogger(__name__)


class VolumeListError(ValueError):
    """A folder, list or CSV of volumes is unusable (names the source and the problem)."""


def case_name(path) -> str:
    """File name without its volume suffix (``case01.nii.gz`` -> ``case01``); a DICOM series is named by patient,
    study and series without identifying text (DicomSeries.name)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def voxel_count(query) -> int:
    """Voxels of a query from its header alone (a DICOM series: one header times its files); 0 when unreadable, so
    a bad file sorts last and fails in its own case."""
    import SimpleITK as sitk

    files = getattr(query, "files", None)
    reader = sitk.ImageFileReader()
    try:
        reader.SetFileName(str(files[0] if files else query))
        reader.ReadImageInformation()
    except RuntimeError:
        return 0
    size = reader.GetSize()
    count = int(size[0]) * int(size[1]) * (int(size[2]) if len(size) > 2 else 1)
    return count * len(files) if files else count


def collect_queries(source: str | os.PathLike) -> list[Path]:
    """Query volumes from a folder (volume files and DICOM sub-folders), a text list (one path per line) or a CSV
    (a ``path``/``image``/``volume`` column, else the first column). Relative paths are taken from the list's folder."""
    source = Path(source)
    if source.is_dir():
        found: list = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        found += _dicom_series_under(source)
        if not found:
            raise VolumeListError(f"{source} holds no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM image "
                                  "series")
        return found
    if not source.is_file():
        raise VolumeListError(f"query source not found: {source}")
    text = source.read_text(encoding="utf-8-sig")
    column = None
    if source.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise VolumeListError(f"{source} is empty")
        header = [h.strip().lower() for h in rows[0]]
        column = next((header.index(k) for k in ("path", "image", "volume") if k in header), None)
        entries = [row[column if column is not None else 0] for row in rows[1 if column is not None else 0:] if row]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    paths = [Path(e) if Path(e).is_absolute() else source.parent / e for e in entries]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        hint = " (it has no path, image or volume column, so its first column was read as paths)" \
            if source.suffix.lower() == ".csv" and column is None else ""
        raise VolumeListError(f"{len(missing)} listed volume(s) of {source.name} do not exist, e.g. {missing[0]}"
                              + hint)
    if not paths:
        raise VolumeListError(f"{source} lists no volumes")
    return paths


def _dicom_series_under(folder: Path) -> list:
    """The DICOM image series anywhere under ``folder`` (each one query); non-image series are skipped with a note."""
    if not any(p.is_file() and p.suffix.lower() in DICOM_SUFFIXES for p in folder.rglob("*")):
        return []
    from MedFoundationSegLib.core.dicom_series import find_series

    series, notes = find_series(folder)
    for note in notes:
        log.warning("%s", note)
    return series
