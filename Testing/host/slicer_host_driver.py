"""Python side of ``slicer_like_host.c``: the Slicer Logic running "Segment inside box" the way the widget does.

``prepare(mode)`` builds a slicer-core scene with three phantom volumes and warms the engine up (the model loaded
on a third volume); then it times the same action on volume B driven from plain Python (the reference). The host then
calls ``start()`` (volume A), holds the GIL without running any Python for ``HOLD_FACTOR`` times the reference's
time, then calls ``poll()`` on every timer tick, and ``report(finished)``, which prints one JSON line. Whether the job
was done at the first poll after that hold tells whether the work needs the host's Python at all.
mode: ``engine`` (the local engine process, the default in Slicer) or ``inprocess`` (torch on a worker thread
inside the host, the old way; a 4-slice box keeps it bounded).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO / "Testing", REPO / "MedFoundationSeg", REPO / "MedLAMLocalize"):
    sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402

STATE: dict = {}
HOLD_FACTOR = 3.0


def _roi(scene, image, liver, slices: int | None):
    from MedFoundationSegLogic import mrml_bridge

    k, j, i = np.nonzero(liver)
    k0, k1 = k.min(), k.max()
    if slices is not None:
        middle = (k0 + k1) // 2
        k0, k1 = middle - slices // 2, middle - slices // 2 + slices - 1
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(
        image, np.array([[i.min(), j.min(), k0], [i.max(), j.max(), k1]])))
    return roi


def prepare(mode: str) -> None:
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from mrml_scene import add_volume_node, mrml_env

    data = np.load(os.environ["HOST_PHANTOMS"])
    scene, _ = mrml_env()
    if mode == "engine":
        from MedFoundationSegLogic.engine_process import default_engine

        engine = default_engine()
    else:
        from MedFoundationSegLib.workflow.inprocess import InProcessEngine

        engine = InProcessEngine()
    logic = MedFoundationSegLogic(scene, Options(refine="none"), engine)
    slices = None if mode == "engine" else 4
    actions = {}
    # The host's volume is the reference's plus 1 HU: the same structure and slices, but nothing encoded yet.
    arrays = {"warm": (data["warm_image"], data["warm_liver"]), "reference": (data["image"], data["liver"]),
              "host": (data["image"] + 1, data["liver"])}
    for name, (array, liver) in arrays.items():
        image = Volume(array, tuple(data["spacing"]), name=name)
        node = add_volume_node(scene, image, name)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} seg")
        roi = _roi(scene, image, liver, slices)
        actions[name] = lambda node=node, roi=roi, segmentation=segmentation: logic.prepare_segment_in_roi(
            node, roi, segmentation)
    warm = actions["warm"]()
    logic.apply(warm, warm.compute())  # the engine starts and loads the model
    started = time.perf_counter()
    reference = actions["reference"]()
    job = reference.start()
    job.wait()
    logic.apply(reference, job.result)
    STATE.update(mode=mode, logic=logic, action=actions["host"], reference_s=time.perf_counter() - started,
                 slices=int(reference.prompts["box_ijk"][1][2] - reference.prompts["box_ijk"][0][2] + 1))


def start() -> int:
    prepared = STATE["action"]()
    hold_s = HOLD_FACTOR * STATE["reference_s"]
    STATE.update(prepared=prepared, job=prepared.start(), started=time.perf_counter(), ticks=0, hold_s=hold_s)
    return round(hold_s * 1000)


def poll() -> bool:
    STATE["ticks"] += 1
    job = STATE["job"]
    done = job.done
    if STATE["ticks"] == 1:
        STATE.update(done_after_hold=done, fraction_after_hold=float(job.fraction))
    if not done:
        return False
    if job.error is not None:
        raise job.error
    STATE["logic"].apply(STATE["prepared"], job.result, segment_name="liver")
    STATE["host_s"] = time.perf_counter() - STATE["started"]
    return True


def report(finished: int) -> None:
    elapsed = STATE.get("host_s", time.perf_counter() - STATE["started"])
    print("HOST-RESULT " + json.dumps({"mode": STATE["mode"], "slices": STATE["slices"], "finished": bool(finished),
                                       "reference_s": round(STATE["reference_s"], 3), "hold_s": round(STATE["hold_s"], 3),
                                       "done_after_hold": STATE.get("done_after_hold", False),
                                       "fraction_after_hold": STATE.get("fraction_after_hold", 0.0),
                                       "host_s": round(elapsed, 3), "ticks": STATE["ticks"]}), flush=True)
    if not finished:  # let the worker thread see the cancel before the host shuts Python down
        STATE["job"].cancel()
        STATE["job"].wait(60)
    if STATE["mode"] == "engine":
        from MedFoundationSegLogic.engine_process import default_engine

        default_engine().stop()
