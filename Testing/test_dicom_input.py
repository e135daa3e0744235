"""DICOM in: a phantom written as a DICOM series reads back voxel for voxel with its geometry; a folder of studies
gives one query per image series, named without patient data, non-image series skipped with a note; missing slices
and multi-frame files are refused with the reason; the batch runs on a DICOM dataset folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from MedFoundationSegLib.core import dicom_series
from MedFoundationSegLib.core.dicom_series import DicomSeries
from MedFoundationSegLib.core.volume import Volume, VolumeError, read_volume
from MedFoundationSegLib.core.volume_files import case_name, collect_queries
from MedFoundationSegLib.sampledata.phantoms import make_phantom

SHAPE = (24, 64, 64)
UID = "1.2.826.0.1.3680043.2.1125.99"


def write_series(volume: Volume, folder: Path, *, patient: str, study: str, series: str, number: int,
                 modality: str = "CT", skip: int | None = None, extra: dict | None = None) -> None:
    """One file per slice with the tags a scanner writes (positions, orientation, UIDs), via SimpleITK."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    direction = np.asarray(volume.direction)
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k == skip:
            continue
        plane = image[:, :, k]
        position = "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {"0008|0060": modality, "0010|0020": patient, "0010|0010": "Doe^Jane", "0020|000d": study,
                "0020|000e": series, "0020|0011": str(number), "0020|0013": str(k + 1), "0020|0032": position,
                "0020|0037": orientation, "0008|0018": f"{series}.{k + 1}", "0020|0052": f"{study}.0",
                "0018|0050": f"{volume.spacing_mm[2]:.4f}", **(extra or {})}
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(11, shape_kji=SHAPE)


def test_a_series_reads_back_voxel_for_voxel_with_its_geometry(phantom, tmp_path):
    write_series(phantom.image, tmp_path / "ct", patient="PAT001", study=f"{UID}.1", series=f"{UID}.1.1", number=2)
    volume = read_volume(tmp_path / "ct")
    assert np.array_equal(volume.array, phantom.image.array)
    assert np.allclose(volume.spacing_mm, phantom.image.spacing_mm, atol=1e-3)
    assert np.allclose(volume.origin_lps_mm, phantom.image.origin_lps_mm, atol=1e-3)
    assert np.allclose(volume.direction, phantom.image.direction)


def test_a_dataset_folder_gives_one_named_query_per_image_series(phantom, tmp_path, caplog):
    root = tmp_path / "export"
    write_series(phantom.image, root / "a" / "study1" / "ct", patient="PAT001", study=f"{UID}.1",
                 series=f"{UID}.1.1", number=2)
    write_series(phantom.image, root / "a" / "study1" / "seg", patient="PAT001", study=f"{UID}.1",
                 series=f"{UID}.1.9", number=300, modality="SEG")
    write_series(phantom.image, root / "b", patient="PAT002", study=f"{UID}.2", series=f"{UID}.2.1", number=5)
    with caplog.at_level(logging.WARNING):
        queries = collect_queries(root)
    assert len(queries) == 2 and all(isinstance(q, DicomSeries) for q in queries)
    assert "SEG, not an image volume" in caplog.text
    names = [case_name(q) for q in queries]
    assert len(set(names)) == 2 and not any("PAT" in n or "Doe" in n for n in names)
    assert {q.series_number for q in queries} == {"2", "5"}
    with pytest.raises(VolumeError, match="holds 2 DICOM image series"):
        read_volume(root)


def test_missing_slices_and_multi_frame_files_are_refused(phantom, tmp_path, monkeypatch):
    write_series(phantom.image, tmp_path / "gap", patient="P", study=f"{UID}.3", series=f"{UID}.3.1", number=1,
                 skip=10)
    with pytest.raises(VolumeError, match="misses slice"):
        read_volume(tmp_path / "gap")
    # SimpleITK cannot write multi-frame files, so the series' headers say so instead.
    write_series(phantom.image, tmp_path / "mf", patient="P", study=f"{UID}.4", series=f"{UID}.4.1", number=1)
    real_header = dicom_series._header
    monkeypatch.setattr(dicom_series, "_header", lambda path: {**real_header(path), "frames": "3"})
    with pytest.raises(VolumeError, match="multi-frame"):
        read_volume(tmp_path / "mf")
    monkeypatch.undo()
    with pytest.raises(VolumeError, match="without a DICOM image series"):
        (tmp_path / "empty").mkdir()
        read_volume(tmp_path / "empty")


def test_the_batch_runs_on_a_dicom_dataset_folder(phantom, tmp_path, capsys):
    from MedFoundationSegLib.cli.main import main
    from MedFoundationSegLib.core.volume import write_volume
    from MedFoundationSegLib.localize.templates import Template, TemplateSet

    template = make_phantom(12, shape_kji=SHAPE)
    write_volume(template.image, tmp_path / "t.nii.gz")
    write_volume(template.labels, tmp_path / "t_labels.nii.gz")
    TemplateSet([Template("t", image_path=tmp_path / "t.nii.gz", labels_path=tmp_path / "t_labels.nii.gz",
                          label_ids={"liver": template.label_ids["liver"],
                                     "kidney_left": template.label_ids["kidney_left"]})]).save(tmp_path / "T.yaml")
    write_series(phantom.image, tmp_path / "export" / "ct", patient="PAT001", study=f"{UID}.5", series=f"{UID}.5.1",
                 number=7)
    out = tmp_path / "out"
    assert main(["batch", f"--templates={tmp_path / 'T.yaml'}", f"--queries={tmp_path / 'export'}",
                 f"--outputFolder={out}", "--refine=none", "--engine=registration",
                 "--outputFormat=seg.nrrd,nifti,dicomseg"]) == 0, capsys.readouterr().err
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    report = json.loads((case / "report.json").read_text())
    assert report["status"] == "ok" and "PAT001" not in json.dumps(report) and "Doe" not in json.dumps(report)
    assert f"{UID}.5.1" in report["query"]
    labels = read_volume(case / "labels.nii.gz")
    assert labels.array.shape == SHAPE and (labels.array == report["structures"]["liver"]["label"]).sum() > 100

    # The DICOM SEG, read back two ways, equals the NIfTI output voxel for voxel and references the source series.
    seg_path = case / "segmentation.dcm"
    assert report["outputs"]["dicom_seg"] == str(seg_path) and report["dicom_seg_encoding"] in ("binary", "labelmap")
    assert len(np.unique(labels.array)) == 3  # both structures found
    by_pydicom = _decode_with_pydicom(seg_path, UID + ".5.1")
    assert np.array_equal(by_pydicom, labels.array)
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    sources = [f"{UID}.5.1.{k + 1}" for k in range(SHAPE[0])]
    by_highdicom = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, combine_segments=True,
                                                     relabel=False)
    assert np.array_equal(by_highdicom, labels.array)
    description = seg.get_segment_description(report["structures"]["liver"]["label"])
    assert description.segment_label == "liver" and description.segmented_property_type.value == "10200004"
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "MedFoundationSeg litemedsam"
    assert report["software"]["model_sha256"] in str(algorithm.AlgorithmParameters)


def _decode_with_pydicom(path: Path, series_uid: str) -> np.ndarray:
    """Label volume from a DICOM SEG with pydicom alone: each frame placed by the source instance it derives from."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    out = np.zeros((SHAPE[0], ds.Rows, ds.Columns), np.uint8)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = int(source.rsplit(".", 1)[-1]) - 1
        if ds.SegmentationType == "LABELMAP":
            out[k] = frame
        else:
            identification = group.get("SegmentIdentificationSequence") or \
                ds.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence  # shared when one segment
            out[k][frame > 0] = identification[0].ReferencedSegmentNumber
    return out
