"""Output files: .seg.nrrd read back by Slicer's own storage node (names, colours, voxels), NIfTI labels, reports;
atomic writes and the no-overwrite rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer.util
from MedFoundationSegLib.core import terminology
from MedFoundationSegLib.core.volume import Volume, read_volume
from MedFoundationSegLib.io import segmentation_io
from mrml_scene import add_volume_node, read_segmentation_file

DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # flipped and permuted axes


def _labels():
    array = np.zeros((10, 14, 12), np.uint8)
    array[2:6, 3:9, 2:7] = 1
    array[5:9, 8:13, 6:11] = 2
    array[0, 0, 0] = 0
    return Volume(array, (0.9, 1.2, 3.0), (5.0, -10.0, 22.0), DIRECTION, "labels")


def test_seg_nrrd_opens_in_slicer_with_names_colours_and_voxels(mrml, tmp_path):
    scene, _ = mrml
    labels = _labels()
    segments = {"liver": (1, (0.9, 0.4, 0.1)), "right kidney": (2, (0.2, 0.5, 0.95))}
    path = segmentation_io.write_seg_nrrd(labels, tmp_path / "case.seg.nrrd", segments)

    reference = add_volume_node(scene, labels.with_array(labels.array.astype(np.int16)), "reference")
    node = read_segmentation_file(scene, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    for name, (label, color) in segments.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        assert segment_id, name
        assert np.allclose(segmentation.GetSegment(segment_id).GetColor(), color, atol=1e-4)
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, reference) > 0
        assert np.array_equal(voxels, labels.array == label), name
        # Slicer's reader sees the standard terminology the file carries (coded organ, laterality modifier).
        tag = terminology.get_segment_terminology(segmentation.GetSegment(segment_id))
        assert tag == terminology.tag_for_structure(name), name
    kidney = terminology.TerminologyEntry.from_tag(terminology.tag_for_structure("right kidney"))
    assert kidney.type_modifier is not None and kidney.type_modifier.meaning == "Right"

    volume, read_segments = segmentation_io.read_seg_nrrd(path)
    assert np.array_equal(volume.array, labels.array) and np.allclose(volume.ijk_to_lps, labels.ijk_to_lps)
    assert {n: s[0] for n, s in read_segments.items()} == {"liver": 1, "right kidney": 2}


def test_outputs_are_never_overwritten_silently(tmp_path):
    labels = _labels()
    nifti = segmentation_io.write_label_map(labels, tmp_path / "labels.nii.gz")
    assert np.array_equal(read_volume(nifti).array, labels.array)
    before = nifti.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        segmentation_io.write_label_map(labels.with_array(labels.array * 0), nifti)
    assert nifti.read_bytes() == before
    segmentation_io.write_label_map(labels.with_array(labels.array * 0), nifti, overwrite=True)
    assert read_volume(nifti).array.max() == 0
    with pytest.raises(ValueError, match="integers"):
        segmentation_io.write_label_map(labels.with_array(labels.array.astype(np.float32)), tmp_path / "f.nii.gz")
    with pytest.raises(ValueError, match=".seg.nrrd"):
        segmentation_io.write_seg_nrrd(labels, tmp_path / "x.nrrd", {})
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_report_round_trip_converts_numpy(tmp_path):
    report = {"dice": np.float32(0.91), "box_ijk": np.array([[1, 2, 3], [4, 5, 6]]),
              "labels_kji": np.zeros((20, 20, 20)), "path": tmp_path}
    path = segmentation_io.write_report(report, tmp_path / "report.json")
    back = json.loads(path.read_text())
    assert back["dice"] == pytest.approx(0.91) and back["box_ijk"] == [[1, 2, 3], [4, 5, 6]]
    assert "labels_kji" not in back and back["path"] == str(tmp_path)
