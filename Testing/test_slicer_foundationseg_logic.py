"""MedFoundationSeg Logic end to end on a real MRML scene (slicer-core) with the real LiteMedSAM weights: ROI box ->
engine -> segment whose labelmap equals the engine's mask voxel for voxel in the volume's IJK grid; propagation,
fill-between and click refinement through the same prepare/compute/apply path; undo."""

from __future__ import annotations

import numpy as np
import pytest
import slicer.util
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import report_lines
from MedFoundationSegLogic import mrml_bridge
from MedFoundationSegLogic.logic import MedFoundationSegLogic
from MedFoundationSegLogic.node_attributes import ENGINE_ATTRIBUTE
from mrml_scene import add_volume_node

SHAPE = (24, 112, 112)


@pytest.fixture(scope="module")
def phantom():
    ph = make_phantom(11, SHAPE)
    flip = np.diag([-1.0, 1.0, -1.0])  # stored with i and k reversed: non-identity IJK-to-RAS

    def flipped(volume):
        origin = volume.lps_from_ijk([[volume.shape_kji[2] - 1, 0, volume.shape_kji[0] - 1]])[0]
        return Volume(volume.array[::-1, :, ::-1].copy(), volume.spacing_mm, tuple(origin),
                      volume.direction @ flip, volume.name)
    return flipped(ph.image), flipped(ph.labels), ph.label_ids


@pytest.fixture(scope="module")
def logic_settings():
    return Options(refine="none", padding_mm=3.0, drawn_box_padding_mm=3.0, mode="box")


def _scene_with(mrml, phantom):
    scene, _ = mrml
    image, labels, ids = phantom
    volume_node = add_volume_node(scene, image, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    return scene, volume_node, segmentation


def test_roi_to_segment_matches_engine_mask_voxel_for_voxel(mrml, phantom, logic_settings):
    scene, volume_node, segmentation = _scene_with(mrml, phantom)
    image, labels, ids = phantom
    truth = labels.array == ids["kidney_right"]
    k, j, i = np.nonzero(truth)
    box_ijk = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(image, box_ijk))

    logic = MedFoundationSegLogic(scene, logic_settings)
    prepared = logic.prepare_segment_in_roi(volume_node, roi, segmentation)
    assert np.array_equal(np.array(prepared.prompts["box_ijk"]), box_ijk)
    result = prepared.compute(progress=None, cancelled=None)
    edit = logic.apply(prepared, result, segment_name="right kidney")
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, edit.segment_id, volume_node) > 0
    assert np.array_equal(written, result.mask_kji)
    assert 2 * (written & truth).sum() / (written.sum() + truth.sum()) >= 0.8
    prompts = mrml_bridge.get_segment_prompts(segmentation, edit.segment_id)
    assert prompts["model"] == "litemedsam" and prompts["action"] == "segment in box"
    assert prompts["report"]["slices"] == [int(k.min()), int(k.max())]

    # Refine with an exclude click inside the segment: the clicked voxel leaves it; undo brings the result back.
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")
    kk, jj, ii = np.argwhere(written)[len(np.argwhere(written)) // 2]
    mrml_bridge.set_control_points_ras(negative, mrml_bridge.ras_from_lps(image.lps_from_ijk([[ii, jj, kk]])))
    refine = logic.prepare_refine(volume_node, segmentation, edit.segment_id, negative_node=negative)
    corrected = refine.compute(progress=None, cancelled=None)
    assert corrected.report["correction"]["clicks"] == 1  # the model was re-prompted on the clicked slice
    assert "1 clicks (clicked slices asked of " in report_lines(corrected.report)[-1]  # what the panel shows
    logic.apply(refine, corrected)
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, edit.segment_id, volume_node) > 0
    assert not refined[kk, jj, ii]
    assert logic.undo() == "refine"
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, edit.segment_id, volume_node) > 0,
                          written)


def test_propagate_and_fill_between_through_the_logic(mrml, phantom, logic_settings):
    scene, volume_node, segmentation = _scene_with(mrml, phantom)
    image, labels, ids = phantom
    truth = labels.array == ids["liver"]
    slices = np.flatnonzero(truth.any(axis=(1, 2)))
    user = segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.8, 0.3, 0.2])
    drawn = np.zeros_like(truth)
    drawn[[slices[1], slices[-2]]] = truth[[slices[1], slices[-2]]]
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn.astype(np.uint8), segmentation, user, volume_node)

    logic = MedFoundationSegLogic(scene, logic_settings)
    fill = logic.prepare_fill_between(volume_node, segmentation, user)
    logic.apply(fill, fill.compute(progress=None, cancelled=None))
    filled = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, user, volume_node) > 0
    assert filled[slices[1]:slices[-2] + 1].any(axis=(1, 2)).all()

    middle = int(slices[len(slices) // 2])
    single = np.zeros_like(truth)
    single[middle] = truth[middle]
    slicer.util.updateSegmentBinaryLabelmapFromArray(single.astype(np.uint8), segmentation, user, volume_node)
    prop = logic.prepare_propagation(volume_node, segmentation, user, slice_index=middle)
    result = prop.compute(progress=None, cancelled=None)
    logic.apply(prop, result)
    assert set(result.report["stop_reasons"]) == {"up", "down"}
    propagated = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, user, volume_node) > 0
    assert propagated.any(axis=(1, 2)).sum() >= 3
    assert logic.undo() == "propagate"
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, user, volume_node) > 0, single)

    empty = segmentation.GetSegmentation().AddEmptySegment("", "empty", [0.1, 0.1, 0.9])
    with pytest.raises(ValueError, match="empty"):
        logic.prepare_propagation(volume_node, segmentation, empty)


@pytest.mark.parametrize("box_mode", ["box_guided", "every_k", "reference", "box"])
def test_segment_in_roi_uses_the_box_mode_of_the_panel_choice(mrml, phantom, box_mode):
    """The panel's mode reaches the engine and is recorded with the prompts so a re-run repeats it."""
    scene, volume_node, segmentation = _scene_with(mrml, phantom)
    image = phantom[0]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(image, np.array([[30, 30, 5],
                                                                                            [60, 60, 15]])))
    logic = MedFoundationSegLogic(scene, Options(mode=box_mode))
    prepared = logic.prepare_segment_in_roi(volume_node, roi, segmentation)
    assert prepared.prompts["mode"] == box_mode
    assert prepared.request.options.mode == box_mode


def test_drawn_box_is_used_as_drawn_and_a_localized_box_is_padded(mrml, phantom):
    """Padding is for the localizer's uncertain walls; a box the user drew is exact (also on a re-run)."""
    scene, volume_node, segmentation = _scene_with(mrml, phantom)
    image = phantom[0]
    box_ijk = np.array([[30, 30, 5], [60, 60, 15]])
    logic = MedFoundationSegLogic(scene, Options(padding_mm=5.0, padding_fraction=0.1, refine="none"))
    drawn = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    mrml_bridge.set_roi_bounds_ras(drawn, mrml_bridge.ras_bounds_from_ijk_box(image, box_ijk))
    localized = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "localized")
    mrml_bridge.set_roi_bounds_ras(localized, mrml_bridge.ras_bounds_from_ijk_box(image, box_ijk))
    localized.SetAttribute(ENGINE_ATTRIBUTE, "registration")

    as_drawn = logic.prepare_segment_in_roi(volume_node, drawn, segmentation)
    assert as_drawn.request.options.padding_mm == 0.0
    assert as_drawn.prompts["localized_by"] is None and as_drawn.prompts["padding_mm"] == 0.0
    padded = logic.prepare_segment_in_roi(volume_node, localized, segmentation)
    assert padded.request.options.padding_mm == 5.0 and padded.request.options.padding_fraction == 0.1
    assert as_drawn.request.options.padding_fraction is None
    assert padded.prompts["localized_by"] == "registration"
    # A drawn box's first and last slices are the structure's: propagation neither stops inside them nor leaves them.
    assert as_drawn.request.options.exact_range and not padded.request.options.exact_range


def test_heads_learned_from_corrections_are_stored_per_structure_and_start_the_next_volume(mrml, phantom, tmp_path):
    from MedFoundationSegLib.io.head_store import HeadStore
    from MedFoundationSegLogic.node_attributes import STRUCTURE_ATTRIBUTE

    scene, volume_node, segmentation = _scene_with(mrml, phantom)
    image, labels, ids = phantom
    truth = labels.array == ids["kidney_right"]
    k, j, i = np.nonzero(truth)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "kidney box")
    roi.SetAttribute(STRUCTURE_ATTRIBUTE, "kidney_right")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(
        image, np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])))
    logic = MedFoundationSegLogic(scene, Options(mode="box_guided", padding_mm=3.0, drawn_box_padding_mm=3.0),
                                  heads_folder=tmp_path / "templates")
    store = HeadStore(tmp_path / "templates")

    first = logic.prepare_segment_in_roi(volume_node, roi, segmentation)
    assert "prior_head" not in first.request.params  # nothing stored yet
    edit = logic.run(first, segment_name="kidney_right")
    assert store.load("kidney_right", "litemedsam") is None  # no correction, no prior: nothing learned

    include = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    kk, jj, ii = np.argwhere(truth & ~(slicer.util.arrayFromSegmentBinaryLabelmap(
        segmentation, edit.segment_id, volume_node) > 0))[0]
    mrml_bridge.set_control_points_ras(include, mrml_bridge.ras_from_lps(image.lps_from_ijk([[ii, jj, kk]])))
    refine = logic.prepare_refine(volume_node, segmentation, edit.segment_id, positive_node=include)
    corrected = refine.compute()
    assert corrected.report["head"]["prior_volumes"] == 0, corrected.report["head"]
    assert corrected.head is not None, corrected.report["head"]
    assert refine.request.options.head_shape and "atlas_images" in corrected.head  # a head to store holds its shape
    # Without a Heads folder the engine is told not to build the shape and atlases of a head nobody stores.
    bare = MedFoundationSegLogic(scene, Options(mode="box_guided", padding_mm=3.0, drawn_box_padding_mm=3.0))
    unstored = bare.prepare_refine(volume_node, segmentation, edit.segment_id, positive_node=include)
    assert not unstored.request.options.head_shape
    unstored_head = unstored.compute().head
    assert unstored_head is not None and "shape" not in unstored_head and "atlas_images" not in unstored_head
    logic.apply(refine, corrected)
    assert logic.head_warning is None and int(store.load("kidney_right", "litemedsam")["volumes"]) == 1

    # The next volume (here: the same anatomy, one unit brighter, in a new node) starts from the stored head and stores
    # one volume more.
    second_node = add_volume_node(scene, image.with_array(image.array + 1), "ct 2")
    second = logic.prepare_segment_in_roi(second_node, roi, segmentation)
    assert second.request.params["prior_head"]["volumes"] == 1
    assert second.request.arrays["prior_head.atlas_images"].shape[0] == 1  # the first volume, as an atlas
    result = second.compute()
    # LiteMedSAM's cut is shifted, so the stored shape (its atlas registered here), not the head, adjusts its first
    # segmentation
    assert result.report["shape_prior"] == {"volumes": 1, "from": "registered atlases (1)"}
    assert "head" not in result.report
    logic.apply(second, result, segment_name="kidney 2")
    assert logic.head_warning is None and result.head is not None, logic.head_warning
    stored = store.load("kidney_right", "litemedsam")
    assert int(stored["volumes"]) == 2 and int(stored["shape_volumes"]) == 2 and len(stored["atlas_masks"]) == 2
    assert 2 * (result.mask_kji & truth).sum() / (result.mask_kji.sum() + truth.sum()) >= 0.8

    # The first volume opened again in a later session (a fresh Logic) and applied again counts once: its atlas is
    # replaced, and neither the shape's count nor the head's grows.
    later = MedFoundationSegLogic(scene, Options(mode="box_guided", padding_mm=3.0, drawn_box_padding_mm=3.0),
                                  heads_folder=tmp_path / "templates")
    reopened = later.prepare_segment_in_roi(volume_node, roi, segmentation)
    later.apply(reopened, reopened.compute(), segment_name="kidney again")
    stored = store.load("kidney_right", "litemedsam")
    assert int(stored["volumes"]) == 2 and int(stored["shape_volumes"]) == 2 and len(stored["atlas_masks"]) == 2
