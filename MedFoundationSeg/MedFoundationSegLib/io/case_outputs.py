"""One case's output folder, written whole or not at all.

Every file goes into a hidden sibling folder first; ``manifest.json`` (each file's sha256 and the fingerprint of the
inputs and options that made the case) is written last, and one rename puts the folder in place. A case is finished
only when its manifest is there and every file still has its recorded hash, so an interrupted write is never taken
for a finished case, and a case made from other inputs is recognised as stale.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from MedFoundationSegLib.core.downloads import sha256_file
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.io import segmentation_io

MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.nii.gz"
SEGMENTATION_NAME = "segmentation.seg.nrrd"
REPORT_NAME = "report.json"
LABEL_MAP_NAME = "labels.json"
DICOM_SEG_NAME = "segmentation.dcm"
ERROR_NAME = "error.txt"
OUTPUT_NAMES = (LABELS_NAME, SEGMENTATION_NAME, DICOM_SEG_NAME, REPORT_NAME, LABEL_MAP_NAME, MANIFEST_NAME,
                ERROR_NAME)
OUTPUT_FORMATS = ("seg.nrrd", "nifti", "dicomseg")
# The demo adds each phantom's image and truth beside its outputs; they may be replaced with the demo's outputs.
DEMO_INPUT_NAMES = ("image.nrrd", "truth_labels.nii.gz")


def case_state(case_dir: Path, fingerprint: str | None = None) -> str:
    """``absent`` (no outputs), ``finished``, ``stale`` (finished from other inputs or options than
    ``fingerprint``) or ``incomplete`` (outputs without a manifest that matches them)."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir() or not any((case_dir / name).exists() for name in OUTPUT_NAMES[:-1]):
        return "absent"
    try:
        manifest = json.loads((case_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        intact = all(sha256_file(case_dir / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "incomplete"
    if not intact:
        return "incomplete"
    return "stale" if fingerprint is not None and manifest.get("fingerprint") != fingerprint else "finished"


def write_case(case_dir: Path, volume: Volume, labels: np.ndarray, label_ids: dict[str, int], report: dict, *,
               colors: dict, overwrite: bool, formats: tuple[str, ...] = ("seg.nrrd", "nifti"),
               dicom_series=None) -> dict[str, Path]:
    """The label map in ``formats`` (labels.nii.gz, segmentation.seg.nrrd, and segmentation.dcm when the query was
    a DICOM series), labels.json and report.json, then the manifest; the folder appears in one rename. Existing
    outputs are replaced only with ``overwrite``; a folder holding anything else is never touched."""
    case_dir = Path(case_dir)
    check_replaceable(case_dir, overwrite)
    # host and process in the name: workers on several machines may share the output folder
    staging = case_dir.parent / f".{case_dir.name}.writing-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    paths = {"label_map": case_dir / LABEL_MAP_NAME, "report": case_dir / REPORT_NAME}
    try:
        if "nifti" in formats:
            segmentation_io.write_label_map(volume.with_array(labels), staging / LABELS_NAME)
            paths["labels"] = case_dir / LABELS_NAME
        if "seg.nrrd" in formats:
            segmentation_io.write_seg_nrrd(volume.with_array(labels), staging / SEGMENTATION_NAME,
                                           {name: (label, colors[name]) for name, label in label_ids.items()})
            paths["segmentation"] = case_dir / SEGMENTATION_NAME
        if "dicomseg" in formats and dicom_series is not None:
            from MedFoundationSegLib.io.dicom_seg import write_dicom_seg

            report["dicom_seg_encoding"] = write_dicom_seg(dicom_series, labels, label_ids, staging / DICOM_SEG_NAME,
                                                           software=report.get("software", {}))
            paths["dicom_seg"] = case_dir / DICOM_SEG_NAME
        (staging / LABEL_MAP_NAME).write_text(json.dumps({"format": "medfoundationseg-labels", "version": 1,
                                                          "labels": label_ids}, indent=2), encoding="utf-8")
        report["outputs"] = {key: str(path) for key, path in paths.items()}
        segmentation_io.write_report(report, staging / REPORT_NAME)
        files = {path.name: sha256_file(staging / path.name) for path in paths.values()}
        (staging / MANIFEST_NAME).write_text(json.dumps({"files": files, "fingerprint": report.get("fingerprint")},
                                                        indent=2), encoding="utf-8")
        _swap_in(staging, case_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def check_replaceable(case_dir: Path, overwrite: bool) -> None:
    if not case_dir.exists():
        return
    if not case_dir.is_dir():
        raise FileExistsError(f"{case_dir} is a file, not a case folder; move it away or choose another output folder")
    entries = [entry.name for entry in case_dir.iterdir()]
    foreign = sorted(set(entries) - set(OUTPUT_NAMES) - set(DEMO_INPUT_NAMES if overwrite else ()))
    if foreign:
        raise FileExistsError(f"{case_dir} holds files this tool did not write ({', '.join(foreign[:3])}); "
                              "choose an empty output folder")
    outputs = [name for name in entries if name != ERROR_NAME]
    if outputs and not overwrite:
        raise FileExistsError(f"outputs exist in {case_dir} ({outputs[0]}, ...); pass --overwrite to replace them")


def _swap_in(staging: Path, case_dir: Path) -> None:
    """Put ``staging`` where ``case_dir`` is: the old folder is moved aside first and removed after."""
    old = None
    if case_dir.exists():
        old = case_dir.parent / f".{case_dir.name}.replaced-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(case_dir, old)
    os.replace(staging, case_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
