"""DICOM SEG output with highdicom: one segment per structure of the template set, coded with the SNOMED CT entries
of terminology.yaml, referencing the source series, naming the algorithm (model, weights sha256, version).

Segment numbers are the label values of labels.json, so every case of a dataset reads with one map; a structure
absent from a case keeps its (empty) segment. The encoding is the smaller of BINARY (one bit plane per segment) and
LABELMAP (one byte per voxel), unless one is asked for.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from MedFoundationSegLib.core import terminology
from MedFoundationSegLib.core.dicom_series import DicomSeries

ENCODINGS = ("auto", "binary", "labelmap")
GENERIC_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
GENERIC_TYPE = ("85756007", "SCT", "Tissue")


def _concept(code) -> object:
    from highdicom.sr import CodedConcept

    return CodedConcept(code.value, code.scheme, code.meaning) if code is not None else None


def segment_descriptions(label_ids: dict[str, int], software: dict) -> list:
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"MedFoundationSeg {software.get('model', '')}".strip(), family=codes.cid7162.ArtificialIntelligence,
        version=str(software.get("medfoundationseg", "")),
        parameters={"model": str(software.get("model", "")),
                    "weights_sha256": str(software.get("model_sha256") or "unpublished")})
    descriptions = []
    for name, value in sorted(label_ids.items(), key=lambda item: item[1]):
        match = terminology.match_structure(name)
        category = _concept(match.entry.category) if match else CodedConcept(*GENERIC_CATEGORY)
        kind = _concept(match.entry.type) if match else CodedConcept(*GENERIC_TYPE)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=int(value), segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    return descriptions


def _build(sources, labels_kji: np.ndarray, label_ids: dict[str, int], software: dict, encoding: str):
    import highdicom as hd

    numbers = sorted(label_ids.values())
    if encoding == "labelmap":
        pixels = labels_kji.astype(np.uint8 if max(numbers, default=0) < 256 else np.uint16)
        kind = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        pixels = np.stack([labels_kji == number for number in numbers], axis=-1)
        kind = hd.seg.SegmentationTypeValues.BINARY
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind,
        segment_descriptions=segment_descriptions(label_ids, software), series_instance_uid=hd.UID(),
        series_number=9001, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedFoundationSeg",
        manufacturer_model_name=str(software.get("model", "")), software_versions=str(software.get("medfoundationseg")),
        device_serial_number="none", series_description="MedFoundationSeg AI segmentation", omit_empty_frames=False)


def write_dicom_seg(series: DicomSeries, labels_kji: np.ndarray, label_ids: dict[str, int], path: Path, *,
                    software: dict, encoding: str = "auto") -> str:
    """Write ``path`` (a .dcm file) for ``labels_kji`` on the grid of ``series``; returns the encoding used."""
    import pydicom

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown DICOM SEG encoding {encoding!r}; use one of {ENCODINGS}")
    sources = [pydicom.dcmread(str(f)) for f in series.files]  # frame k is file k: the order the volume was read in
    if labels_kji.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"labels of shape {labels_kji.shape} do not fit {series} ({len(sources)} slices of "
                         f"{sources[0].Rows}x{sources[0].Columns})")
    candidates = ("binary", "labelmap") if encoding == "auto" else (encoding,)
    best = None
    for kind in candidates:
        buffer = io.BytesIO()
        try:
            _build(sources, labels_kji, label_ids, software, kind).save_as(buffer)
        except (ValueError, AttributeError, TypeError) as error:  # highdicom: source headers lack what a SEG needs
            raise ValueError(f"cannot write a DICOM SEG for {series}: {error}") from None
        if best is None or buffer.tell() < len(best[1]):
            best = (kind, buffer.getvalue())
    path.write_bytes(best[1])
    return best[0]
