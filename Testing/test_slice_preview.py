"""A job's result slice by slice while it runs: the preview store, the slices a propagation hands it before it
returns, the engine route, and the scratch node the Slicer Logic draws them in (slicer-core)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from MedFoundationSegLib.core.progress import show_slice, slices_to
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment import propagate
from MedFoundationSegLib.workflow.actions import EngineRequest
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.preview import SlicePreview
from test_engine_server import TOKEN, _raw, server, small_volume  # noqa: F401 (module fixtures)


def test_the_store_hands_out_each_slice_once_per_update_and_keeps_its_own_copy():
    preview = SlicePreview("axial")
    assert preview.since(0) == (0, [], None)
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    preview.publish(3, mask)
    preview.publish(1, ~mask)
    mask[:] = True  # the caller goes on editing its array: the preview keeps what was published
    version, indices, masks = preview.since(0)
    assert (version, indices) == (2, [1, 3]) and masks.dtype == bool
    assert masks[1].sum() == 1 and masks[0].sum() == 19
    preview.publish(3, np.ones((4, 5), bool))
    assert preview.since(version)[1] == [3]  # only what changed since the client's last version
    assert preview.since(3) == (3, [], None)
    show_slice(0, mask)  # nobody listens: nothing happens


class _GatedDisks:
    """A slice segmenter that answers a disk and, from the 3rd slice on, waits until the test lets it go on."""

    def __init__(self, shape_hw):
        rows, cols = np.ogrid[: shape_hw[0], : shape_hw[1]]
        self.disk = (rows - shape_hw[0] / 2) ** 2 + (cols - shape_hw[1] / 2) ** 2 < 100
        self.calls, self.go_on = 0, threading.Event()

    def segment(self, k, box, points=None, labels=None, mask_prompt=None):
        self.calls += 1
        if self.calls >= 3:
            assert self.go_on.wait(30)
        return self.disk.copy(), 0.9


def test_a_propagation_shows_its_slices_before_it_returns():
    shape = (12, 40, 40)
    segmenter, preview, result = _GatedDisks(shape[1:]), SlicePreview("axial"), {}

    def run():
        with slices_to(preview.publish):
            result["mask"] = propagate.box_guided(segmenter, shape, ((2, 9), (10, 30), (10, 30))).mask

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(300):
        if len(preview.since(0)[1]) >= 2:
            break
        threading.Event().wait(0.01)
    version, indices, masks = preview.since(0)
    assert indices == [5, 6] and "mask" not in result  # the middle slice and one neighbour, while it still runs
    assert np.array_equal(masks[0], segmenter.disk)
    segmenter.go_on.set()
    thread.join(30)
    final = preview.since(0)
    assert final[1] == list(range(2, 10))
    assert np.array_equal(final[2], result["mask"][2:10])


def test_the_engine_serves_the_slices_of_a_job_and_they_are_its_result(server, small_volume):  # noqa: F811
    from MedFoundationSegLogic.engine_client import EngineClient

    client = EngineClient(server["url"], TOKEN)
    box = np.array([[20, 20, 2], [45, 45, 13]])
    request = EngineRequest("segment_box", small_volume.image, Options(refine="none", mode="box", learn=False),
                        {"box_ijk": box.tolist()})
    job = client.submit(request)
    seen_before_done = 0
    while not job.done:
        seen_before_done = max(seen_before_done, len(job.preview_since(0)[2]))
    assert job.error is None
    mask_kji = job.result.case_result().mask_kji
    version, axis, indices, masks = job.preview_since(0)
    assert axis == "axial" and indices == list(range(2, 14)) and masks.shape == (12, 64, 64)
    assert np.array_equal(masks, mask_kji[2:14])  # box mode without refinement: the preview is the result
    assert job.preview_since(version)[2] == []
    print(f"slices seen before the job ended: {seen_before_done} of {len(indices)}")
    status, body = _raw(server, "GET", f"/jobs/{job.job_id}/preview?since=-1")
    assert status == 400 and b"since" in body


@pytest.fixture(scope="module")
def phantom_scene():
    return make_phantom(12, (20, 96, 96))


def test_the_logic_draws_finished_slices_in_a_scratch_node_it_removes(mrml, phantom_scene):
    import slicer.util
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from MedFoundationSegLogic.node_attributes import PREVIEW_ATTRIBUTE
    from mrml_scene import add_volume_node

    scene, _ = mrml
    volume_node = add_volume_node(scene, phantom_scene.image, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    k, j, i = np.nonzero(phantom_scene.mask("liver"))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    box_ijk = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(phantom_scene.image, box_ijk))
    logic = MedFoundationSegLogic(scene, Options(refine="none", mode="box", learn=False))
    prepared = logic.prepare_segment_in_roi(volume_node, roi, segmentation)
    job = prepared.start()
    while not job.done:
        logic.show_preview(prepared, job)
    shown = logic.show_preview(prepared, job, force=True)
    assert shown == k.max() - k.min() + 1
    node = logic.preview.node
    assert node is not None and node.GetAttribute(PREVIEW_ATTRIBUTE) == "1"
    assert node.GetHideFromEditors() and not node.GetSaveWithScene()
    result = job.result.case_result()
    preview_kji = slicer.util.arrayFromSegmentBinaryLabelmap(node, "preview", volume_node) > 0
    assert np.array_equal(preview_kji, result.mask_kji)
    logic.clear_preview()
    assert logic.preview.node is None
    assert not [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n.GetAttribute(PREVIEW_ATTRIBUTE)]
    edit = logic.apply(prepared, result, segment_name="liver")
    assert edit.voxels_protected == 0 and edit.voxels_written == int(result.mask_kji.sum())
    assert len(logic.history) == 1  # the preview left no undo step
