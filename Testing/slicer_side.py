"""The Slicer side of an annotation session, scripted: a slicer-core scene, the two Logics on the engine client, and
each panel action as the widgets run it (prepare, start, poll, apply). Used by tests that must run in a fresh
interpreter (no torch in it) and by the Slicer-like embedded host (``slicer_like_host.c``).

Run by the host, ``start_*`` functions begin an action and ``poll()`` is what a QTimer tick does: one short look at
the job, and the result written into the scene when it is done.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "Testing", REPO / "MedFoundationSeg", REPO / "MedLAMLocalize"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402

STATE: dict = {}


def setup_scene(shape=(24, 112, 112), seed: int = 3) -> dict:
    """Scene with a CT phantom volume, an ROI around its liver and an empty segmentation. The phantom is made in a
    child process (it needs the engine's image stack), written to NRRD and read back here with SimpleITK-free I/O."""
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from mrml_scene import add_volume_node, mrml_env

    data = np.load(os.environ["SLICER_SIDE_PHANTOM"])
    image = Volume(data["image"], tuple(data["spacing"]), name="ct")
    liver = data["liver"]
    scene, _ = mrml_env()
    volume_node = add_volume_node(scene, image, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    k, j, i = np.nonzero(liver)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "liver box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(
        image, np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])))
    logic = MedFoundationSegLogic(scene, Options(refine="none"))
    STATE.update(scene=scene, volume_node=volume_node, segmentation=segmentation, roi=roi, logic=logic, liver=liver,
                 image=image)
    return STATE


def start_segment_in_roi() -> None:
    """What "Segment inside box" does: prepare on the GUI thread, hand the request to the engine."""
    prepared = STATE["logic"].prepare_segment_in_roi(STATE["volume_node"], STATE["roi"], STATE["segmentation"])
    STATE.update(prepared=prepared, job=prepared.start(), started=time.perf_counter(), edit=None)


def poll() -> bool:
    """One QTimer tick: look at the job; apply its result when done. Returns True once the action has ended."""
    job = STATE["job"]
    if not job.done:
        return False
    if job.error is not None:
        raise job.error
    STATE["edit"] = STATE["logic"].apply(STATE["prepared"], job.result, segment_name="liver")
    STATE["seconds"] = time.perf_counter() - STATE["started"]
    return True


def write_phantom(path: str, shape=(24, 112, 112), seed: int = 3) -> None:
    from MedFoundationSegLib.sampledata.phantoms import make_phantom

    phantom = make_phantom(seed, shape)
    np.savez(path, image=phantom.image.array, spacing=np.array(phantom.image.spacing_mm), liver=phantom.mask("liver"))


def every_action_without_torch() -> list[str]:
    """Every panel action through the Logic on the engine process; returns the actions run. The caller checks that
    torch never entered this interpreter."""
    import slicer.util
    from MedFoundationSegLib.localize.templates import structure_points_from_mask
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic import mrml_bridge
    from MedLAMLocalizeLogic import MedLAMLocalizeLogic

    done = []
    state = setup_scene()
    logic, node, segmentation = state["logic"], state["volume_node"], state["segmentation"]
    prepared = logic.prepare_segment_in_roi(node, state["roi"], segmentation)
    edit = logic.apply(prepared, prepared.compute())
    done.append("segment in box")
    liver_slices = np.flatnonzero(state["liver"].any(axis=(1, 2)))
    middle = int(liver_slices[len(liver_slices) // 2])
    single = np.zeros_like(state["liver"])
    single[middle] = state["liver"][middle]
    user = segmentation.GetSegmentation().AddEmptySegment("", "drawn", [0.2, 0.8, 0.2])
    slicer.util.updateSegmentBinaryLabelmapFromArray(single.astype(np.uint8), segmentation, user, node)
    for prepare in (lambda: logic.prepare_propagation(node, segmentation, user, middle),
                    lambda: logic.prepare_propagation(node, segmentation, user, middle, outward_only=True),
                    lambda: logic.prepare_fill_between(node, segmentation, edit.segment_id),
                    lambda: logic.prepare_refine(node, segmentation, edit.segment_id),
                    lambda: logic.prepare_rerun(node, segmentation, edit.segment_id)):
        action = prepare()
        logic.apply(action, action.compute())
        done.append(action.action)
    assert logic.undo()
    done.append("undo")
    localizer = MedLAMLocalizeLogic(state["scene"])
    clicks = state["scene"].AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    mrml_bridge.set_control_points_ras(clicks, mrml_bridge.ras_from_lps(
        structure_points_from_mask(state["image"].with_array(state["liver"].astype(np.uint8)), state["liver"])))
    localizer.add_structure(node, "liver", clicks)
    results, nodes, _ = localizer.localize(node, Options(engine="registration"))
    assert results["liver"].present and "liver" in nodes
    done.append("localize")
    return done


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "phantom":
        write_phantom(sys.argv[2])
    elif command == "no-torch":
        actions = every_action_without_torch()
        print("actions:", ", ".join(actions))
        print("torch imported:", "torch" in sys.modules)
        sys.exit(1 if "torch" in sys.modules else 0)
