"""Each panel action driven through its Logic on a slicer-core scene, with the arguments the widgets pass: MedLAM
localization (seeded random weights, sub-patches), slice embeddings kept across actions, propagation and refinement
with progress and cancel, and undo that never wipes a later manual edit."""

from __future__ import annotations

import time

import numpy as np
import pytest
import slicer.util
import torch
from MedFoundationSegLib.core.progress import Cancelled
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.medlam.network import MedLAM
from MedFoundationSegLib.localize.templates import TemplateError, TemplateSet, structure_points_from_mask
from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom
from MedFoundationSegLib.workflow.inprocess import InProcessEngine
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLogic import mrml_bridge
from MedFoundationSegLogic.logic import MedFoundationSegLogic
from MedFoundationSegLogic.node_attributes import ENGINE_ATTRIBUTE, STRUCTURE_ATTRIBUTE
from MedFoundationSegLogic.segment_edits import SegmentEditHistory
from MedLAMLocalizeLogic import MedLAMLocalizeLogic
from mrml_scene import add_volume_node


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, (24, 112, 112))


def _template_logic(scene, phantom, structures=("liver", "spleen")):
    template_node = add_volume_node(scene, phantom.image, "template")
    logic = MedLAMLocalizeLogic(scene)
    for name in structures:
        points_ras = mrml_bridge.ras_from_lps(structure_points_from_mask(phantom.labels, phantom.mask(name)))
        clicks = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} clicks")
        mrml_bridge.set_control_points_ras(clicks, points_ras)
        logic.add_structure(template_node, name, clicks)
    return logic


def test_medlam_localization_from_the_panel_runs(mrml, phantom, isolated_cache):
    """The panel's MedLAM path (engine, sub-patches, slab thickness, re-centring, seed) reaches the localizer: it
    used to pass keywords the engine call did not take and failed on the worker every time."""
    scene, _ = mrml
    logic = _labelled_template_logic(scene, phantom, engine=InProcessEngine())  # a network object cannot travel
    # A small seeded random network (same topology): the plumbing is under test, not MedLAM's accuracy.
    torch.manual_seed(0)
    logic.medlam_weights = MedLAM(base_chns=4, patch_size=(32, 32, 32)).eval()
    query_node = add_volume_node(scene, phantom.image, "query")
    options = Options(engine="medlam", spl=True, slice_interval=2, recentre_iterations=1, seed=7)
    (prepared,) = logic.prepare_localization([query_node], options)
    assert prepared.engine.engine == "medlam"
    seen = []
    results = prepared.compute(progress=lambda f, m: seen.append(f), cancelled=lambda: False)
    assert set(results) == {"liver", "spleen"} and seen
    assert all(box.engine == "medlam" for box in results.values())
    assert any(box.slabs for box in results.values()), "SPL asked for, no slab localized"
    nodes = logic.apply_localization(results, query_node)
    for name, created in nodes.items():
        assert created.roi_node.GetAttribute(ENGINE_ATTRIBUTE) == "medlam"
        assert created.roi_node.GetAttribute(STRUCTURE_ATTRIBUTE) == name
    with pytest.raises(Cancelled):
        logic.prepare_localization([query_node], options)[0].compute(progress=None, cancelled=lambda: True)


def _labelled_template_logic(scene, phantom, engine=None):
    """A template set with label volumes, as a loaded template-set file gives (sub-patches need the masks)."""
    logic = MedLAMLocalizeLogic(scene, engine)
    logic.template_set = TemplateSet([template_from_phantom("template", phantom, ["liver", "spleen"])])
    return logic


def test_registration_localization_from_the_panel_with_sub_patches(mrml, phantom):
    scene, _ = mrml
    logic = _labelled_template_logic(scene, phantom)
    query_node = add_volume_node(scene, phantom.image, "query")
    (prepared,) = logic.prepare_localization([query_node], Options(engine="registration", spl=True),
                                             structures=["liver"])
    results = prepared.compute(progress=None, cancelled=None)
    assert results["liver"].engine == "registration" and results["liver"].slabs


def test_sub_patches_from_clicked_templates_are_refused_before_anything_runs(mrml, phantom):
    scene, _ = mrml
    logic = _template_logic(scene, phantom, ("liver",))
    query_node = add_volume_node(scene, phantom.image, "query")
    with pytest.raises(TemplateError, match="label volumes"):
        logic.prepare_localization([query_node], Options(engine="registration", spl=True))


def test_panel_refuses_an_empty_template_set_and_no_query(mrml, phantom):
    scene, _ = mrml
    logic = MedLAMLocalizeLogic(scene)
    with pytest.raises(ValueError, match="empty"):
        logic.prepare_localization([add_volume_node(scene, phantom.image, "q")], Options())
    logic = _template_logic(scene, phantom, ("liver",))
    with pytest.raises(ValueError, match="query volume"):
        logic.prepare_localization([], Options())


def _segmentation_scene(scene, phantom):
    volume_node = add_volume_node(scene, phantom.image, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    return volume_node, segmentation


def _roi(scene, volume: Volume, mask, name):
    k, j, i = np.nonzero(mask)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    box_ijk = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(volume, box_ijk))
    return roi


def _wait_until_idle(engine, timeout_s: float = 300.0) -> dict:
    """The engine's health once it has no idle work left (workflow/idle_work.py): encoder counts then stay put."""
    deadline = time.monotonic() + timeout_s
    while (health := engine.health())["idle_work"]:
        assert time.monotonic() < deadline, "the engine's idle work did not finish"
        time.sleep(0.1)
    return health


def test_second_action_on_a_volume_encodes_no_slice_again(mrml, phantom):
    """Every action copies the volume out of the scene; the embeddings must follow the volume, not the copy. (Clicks
    stay with the segmenting model here, so only its encoder passes are counted.)"""
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    logic = MedFoundationSegLogic(scene, Options(refine="none", click_model=""))
    _wait_until_idle(logic.engine)  # an earlier test's idle work would count here
    liver = _roi(scene, phantom.image, phantom.mask("liver"), "liver box")
    spleen = _roi(scene, phantom.image, phantom.mask("spleen"), "spleen box")

    first = logic.prepare_segment_in_roi(volume_node, liver, segmentation)
    edit = logic.apply(first, first.compute(progress=None, cancelled=None), segment_name="liver")
    encoded = logic.engine.health()["slices_encoded"]
    assert encoded > 0

    rerun = logic.prepare_rerun(volume_node, segmentation, edit.segment_id)  # the same box again
    logic.apply(rerun, rerun.compute(progress=None, cancelled=None))
    assert logic.engine.health()["slices_encoded"] == encoded

    liver_slices, spleen_slices = (set(range(ks.min(), ks.max() + 1)) for ks in
                                   (np.flatnonzero(phantom.mask(name).any(axis=(1, 2))) for name in ("liver", "spleen")))
    second = logic.prepare_segment_in_roi(volume_node, spleen, segmentation)  # another structure
    logic.apply(second, second.compute(progress=None, cancelled=None), segment_name="spleen")
    assert logic.engine.health()["slices_encoded"] == encoded + len(spleen_slices - liver_slices)

    middle = int(np.median(sorted(liver_slices)))
    propagate = logic.prepare_propagation(volume_node, segmentation, edit.segment_id, middle)
    before = logic.engine.health()["slices_encoded"]
    result = propagate.compute(progress=None, cancelled=None)
    new_slices = set(result.report["segmented"]) - liver_slices - spleen_slices
    # Only slices never encoded before (plus the one each way where the walk stopped) cost an encoder pass.
    assert logic.engine.health()["slices_encoded"] - before <= len(new_slices) + 2

    # The voxels change: the embeddings of the old voxels are not reused.
    slicer.util.arrayFromVolume(volume_node)[:] += 1
    slicer.util.arrayFromVolumeModified(volume_node)
    again = logic.prepare_segment_in_roi(volume_node, liver, segmentation)
    assert again.compute(progress=None, cancelled=None).report["slices_encoded"] == len(liver_slices)


def test_the_engine_encodes_the_click_models_slices_while_the_user_looks(mrml, phantom):
    """After a segmentation whose clicks go to MobileSAM, the engine encodes the box's slices with it between
    requests; the same box segmented again then costs neither model an encoder pass, and a click encodes nothing."""
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    logic = MedFoundationSegLogic(scene, Options(refine="none"))
    liver = _roi(scene, phantom.image, phantom.mask("liver"), "liver box for clicks")
    first = logic.prepare_segment_in_roi(volume_node, liver, segmentation)
    edit = logic.apply(first, first.compute(progress=None, cancelled=None), segment_name="liver")
    health = _wait_until_idle(logic.engine)
    assert {"litemedsam", "mobilesam"} <= set(health["models"])
    rerun = logic.prepare_rerun(volume_node, segmentation, edit.segment_id)
    logic.apply(rerun, rerun.compute(progress=None, cancelled=None))
    assert _wait_until_idle(logic.engine)["slices_encoded"] == health["slices_encoded"]
    ks = np.flatnonzero(phantom.mask("liver").any(axis=(1, 2)))
    k = int(ks[len(ks) // 4])  # a slice away from the middle, which the segmentation's own readying encodes
    j, i = (int(v) for v in np.argwhere(phantom.mask("liver")[k]).mean(axis=0))
    point_ras = (mrml_bridge.ijk_to_ras_of(volume_node) @ np.array([i, j, k, 1.0]))[:3]
    clicks = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "liver clicks")
    mrml_bridge.set_control_points_ras(clicks, point_ras[None])
    click = logic.prepare_refine(volume_node, segmentation, edit.segment_id, positive_node=clicks)
    result = click.compute(progress=None, cancelled=None)
    assert result.report["correction"]["click_model"] == "mobilesam"
    assert _wait_until_idle(logic.engine)["slices_encoded"] == health["slices_encoded"]


@pytest.mark.parametrize("action, mode", [("box", "every_k"), ("box", "reference"), ("propagate", "box_guided"),
                                          ("propagate", "every_k"), ("re-propagate", "box_guided"),
                                          ("refine", "box_guided")])
def test_long_actions_report_progress_and_stop_on_cancel(mrml, phantom, action, mode):
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    logic = MedFoundationSegLogic(scene, Options(refine="graphcut", mode=mode))
    liver = phantom.mask("liver")
    segment = segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.8, 0.3, 0.2])
    middle = int(np.median(np.flatnonzero(liver.any(axis=(1, 2)))))
    drawn = np.zeros_like(liver)
    drawn[middle] = liver[middle]
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn.astype(np.uint8), segmentation, segment, volume_node)
    prepared = {
        "box": lambda: logic.prepare_segment_in_roi(volume_node, _roi(scene, phantom.image, liver, "b"), segmentation),
        "propagate": lambda: logic.prepare_propagation(volume_node, segmentation, segment, middle),
        "re-propagate": lambda: logic.prepare_propagation(volume_node, segmentation, segment, middle,
                                                          outward_only=True),
        "refine": lambda: logic.prepare_refine(volume_node, segmentation, segment),
    }[action]()
    fractions = []
    result = prepared.compute(progress=lambda f, m: fractions.append(f), cancelled=lambda: False)
    assert result.mask_kji.any() and fractions and fractions[-1] == 1.0
    with pytest.raises(Cancelled):
        prepared.compute(progress=None, cancelled=lambda: True)


def test_cancel_reaches_a_running_job_on_the_engine_and_the_engine_keeps_serving(mrml, phantom):
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    logic = MedFoundationSegLogic(scene, Options(refine="none"))
    prepared = logic.prepare_segment_in_roi(volume_node, _roi(scene, phantom.image, phantom.mask("liver"), "b"),
                                            segmentation)
    seen = []
    with pytest.raises(Cancelled):
        prepared.compute(progress=lambda f, m: seen.append(m), cancelled=lambda: len(seen) > 1)
    assert logic.engine.health()["queue"] == 0
    assert prepared.compute(progress=None, cancelled=None).mask_kji.any()


def test_reference_mode_is_refused_for_propagation(mrml, phantom):
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    segment = segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.8, 0.3, 0.2])
    slicer.util.updateSegmentBinaryLabelmapFromArray(phantom.mask("liver").astype(np.uint8), segmentation, segment,
                                                     volume_node)
    logic = MedFoundationSegLogic(scene, Options(mode="reference"))
    with pytest.raises(ValueError, match="reference procedure"):
        logic.prepare_propagation(volume_node, segmentation, segment)


def test_undo_keeps_manual_edits_made_after_the_ai_edit(mrml, phantom):
    scene, _ = mrml
    volume_node, segmentation = _segmentation_scene(scene, phantom)
    history = SegmentEditHistory(scene)
    user = segmentation.GetSegmentation().AddEmptySegment("", "organ", [0.8, 0.3, 0.2])
    before = np.zeros(phantom.image.shape_kji, bool)
    before[10, 40:60, 40:60] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(before.astype(np.uint8), segmentation, user, volume_node)
    ai = np.zeros_like(before)
    ai[8:14, 30:70, 30:70] = True
    history.apply(volume_node, segmentation, ai, segment_id=user, action="segment in box")

    manual = mrml_bridge.segment_mask_kji(segmentation, user, volume_node)
    manual[12, 30:70, 30:50] = False  # the user erases part of the AI result ...
    manual[20, 5:15, 5:15] = True  # ... and paints somewhere else
    slicer.util.updateSegmentBinaryLabelmapFromArray(manual.astype(np.uint8), segmentation, user, volume_node)

    assert history.undo() == "segment in box"
    after = mrml_bridge.segment_mask_kji(segmentation, user, volume_node)
    assert np.array_equal(after[10], before[10])  # the AI's voxels are gone, the user's original slice is back
    assert not after[12].any()  # the erased AI voxels stay erased, the rest of the AI slice is undone
    assert after[20, 5:15, 5:15].all()  # the later paint survives
    assert after.sum() == before.sum() + 100

    created = history.apply(volume_node, segmentation, ai, segment_name="new", action="segment in box")
    assert history.undo() == "segment in box"
    assert segmentation.GetSegmentation().GetSegment(created.segment_id) is None


def test_undo_history_is_cropped_and_packed():
    """20 steps of a large edit on a 512x512x300 volume stay far below 100 MB."""
    from MedFoundationSegLogic.segment_edits import EditRecord
    from MedFoundationSegLogic.segment_edits import SegmentEditHistory as History

    shape = (300, 512, 512)
    previous = np.zeros(shape, bool)
    z, y, x = np.ogrid[:300, :512, :512]
    written = (z - 150) ** 2 / 100 ** 2 + (y - 256) ** 2 / 150 ** 2 + (x - 256) ** 2 / 150 ** 2 <= 1

    class Node:
        def GetID(self):
            return "n"

    records = [History._record(Node(), "s", False, previous, written, None, Node(), "box") for _ in range(20)]
    assert all(isinstance(r, EditRecord) for r in records)
    total_mb = sum(r.nbytes for r in records) / 1e6
    assert total_mb < 100, total_mb
