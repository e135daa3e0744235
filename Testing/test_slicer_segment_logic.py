"""The MedFoundationSeg Logic on a real MRML scene (slicer-core): geometry, ROI boxes, undoable non-destructive
segment writes, prompt tags, and .seg.nrrd round trip through Slicer's own storage node."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLogic import mrml_bridge
from MedFoundationSegLogic.segment_edits import SegmentEditHistory
from mrml_scene import add_volume_node, read_segmentation_file, write_segmentation_file

# i runs along -y (posterior->anterior flipped), j along +x, k along -z: a permuted, flipped, anisotropic grid.
DIRECTION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _volume(shape_kji=(12, 20, 16)):
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-100, 100, shape_kji).astype(np.int16), spacing_mm=(0.8, 1.1, 2.5),
                  origin_lps_mm=(12.0, -30.0, 40.0), direction=DIRECTION, name="ct")


def test_volume_node_geometry_round_trip(mrml):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    back = mrml_bridge.volume_from_node(node)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_lps, volume.ijk_to_lps)
    assert not np.allclose(mrml_bridge.ijk_to_ras_of(node)[:3, :3], np.diag(np.diag(mrml_bridge.ijk_to_ras_of(node)[:3, :3])))


def test_roi_to_ijk_box_and_back(mrml):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    box = np.array([[3, 4, 2], [9, 15, 7]])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(volume, box))
    assert np.array_equal(mrml_bridge.ijk_box_from_ras_bounds(mrml_bridge.volume_from_node(node),
                                                               mrml_bridge.roi_bounds_ras(roi)), box)
    far = mrml_bridge.roi_bounds_ras(roi) + 1000.0
    with pytest.raises(ValueError, match="outside"):
        mrml_bridge.ijk_box_from_ras_bounds(volume, far)


def _mask(shape, box):
    mask = np.zeros(shape, bool)
    (i0, j0, k0), (i1, j1, k1) = box
    mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = True
    return mask


def test_ai_edit_is_exact_protects_other_segments_and_undoes(mrml):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    user_id = seg.GetSegmentation().AddEmptySegment("", "user lesion", [0.2, 0.8, 0.2])
    user_mask = _mask(volume.shape_kji, [[2, 2, 2], [5, 5, 4]])
    slicer.util.updateSegmentBinaryLabelmapFromArray(user_mask.astype(np.uint8), seg, user_id, node)

    history = SegmentEditHistory(scene)
    ai_mask = _mask(volume.shape_kji, [[4, 4, 3], [10, 14, 8]])
    prompts = {"model": "litemedsam", "box_ijk": [[4, 4, 3], [10, 14, 8]], "clicks_ras": [[1.0, -2.0, 3.5]]}
    result = history.apply(node, seg, ai_mask, segment_name="liver", prompts=prompts, action="segment in box")
    written = slicer.util.arrayFromSegmentBinaryLabelmap(seg, result.segment_id, node) > 0
    assert np.array_equal(written, ai_mask & ~user_mask)  # voxel for voxel in the volume's IJK grid
    assert result.voxels_protected == int((ai_mask & user_mask).sum()) > 0
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, user_id, node) > 0, user_mask)
    assert mrml_bridge.get_segment_prompts(seg, result.segment_id) == dict(prompts, action="segment in box")
    assert mrml_bridge.get_segment_prompts(seg, user_id) == {}

    # A second action on the same segment, then undo restores the first result and its tags exactly.
    smaller = _mask(volume.shape_kji, [[6, 6, 4], [8, 8, 6]])
    history.apply(node, seg, smaller, segment_id=result.segment_id, prompts={"model": "mobilesam"}, action="refine")
    assert (slicer.util.arrayFromSegmentBinaryLabelmap(seg, result.segment_id, node) > 0).sum() == smaller.sum()
    assert history.undo() == "refine"
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, result.segment_id, node) > 0,
                          ai_mask & ~user_mask)
    assert mrml_bridge.get_segment_prompts(seg, result.segment_id)["model"] == "litemedsam"
    # Undoing the creation removes only the AI segment; the user's segment is untouched.
    assert history.undo() == "segment in box"
    assert seg.GetSegmentation().GetSegment(result.segment_id) is None
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, user_id, node) > 0, user_mask)
    assert history.undo() is None


def test_wrong_mask_shape_is_refused(mrml):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(ValueError, match="does not match"):
        SegmentEditHistory(scene).apply(node, seg, np.ones((3, 3, 3), bool))
    assert seg.GetSegmentation().GetNumberOfSegments() == 0


def test_seg_nrrd_round_trip_through_storage_node(mrml, tmp_path):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    history = SegmentEditHistory(scene)
    first = history.apply(node, seg, _mask(volume.shape_kji, [[1, 1, 1], [6, 7, 5]]), segment_name="liver",
                          color_rgb=(0.8, 0.4, 0.2), prompts={"model": "litemedsam"})
    second = history.apply(node, seg, _mask(volume.shape_kji, [[9, 10, 6], [13, 17, 10]]), segment_name="spleen",
                           color_rgb=(0.1, 0.3, 0.9))
    path = tmp_path / "out.seg.nrrd"
    write_segmentation_file(scene, seg, path)
    loaded = read_segmentation_file(scene, path)
    for result, name, color in ((first, "liver", (0.8, 0.4, 0.2)), (second, "spleen", (0.1, 0.3, 0.9))):
        segment = loaded.GetSegmentation().GetSegment(result.segment_id)
        assert segment.GetName() == name
        assert np.allclose(segment.GetColor(), color, atol=1e-3)
        assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(loaded, result.segment_id, node) > 0,
                              slicer.util.arrayFromSegmentBinaryLabelmap(seg, result.segment_id, node) > 0)
    assert mrml_bridge.get_segment_prompts(loaded, first.segment_id)["model"] == "litemedsam"
