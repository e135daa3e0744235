"""What the engine process costs a Slicer action: "Segment inside box" on a CT phantom structure of N slices through
the Logic and the local engine process, against the same action run directly on the engine in this process, in the
same run (blocks alternate, each on voxels nothing has encoded yet). Then the Slicer side's memory in a fresh
interpreter that plays Slicer (no torch): its resident memory above the scene's own data. Prints figures only.

    python benchmarks/bench_engine.py [--slices 60] [--repeats 2] [--memory-shape 300,512,512]

The panel shows a structure when its job ends, so "first displayed slice" and "whole structure" are the same moment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "Testing", REPO / "MedFoundationSeg", REPO / "MedLAMLocalize"):
    sys.path.insert(0, str(folder))


def _rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def speed(args) -> None:
    import torch
    from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision, select_device
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.workflow.inprocess import InProcessEngine
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.engine_process import LocalEngine
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from mrml_scene import add_volume_node, mrml_env

    phantom = make_phantom(31, (args.slices + 8, 192, 192))
    liver = phantom.mask("liver")
    k, j, i = np.nonzero(liver)
    middle = (k.min() + k.max()) // 2
    box = np.array([[i.min(), j.min(), max(middle - args.slices // 2, 0)],
                    [i.max(), j.max(), min(middle - args.slices // 2 + args.slices - 1, liver.shape[0] - 1)]])
    scene, _ = mrml_env()
    options = Options(refine="none")
    engines = {"direct": InProcessEngine(), "engine process": LocalEngine(sys.executable)}
    logics = {name: MedFoundationSegLogic(scene, options, engine) for name, engine in engines.items()}
    device = select_device("auto")
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores; torch {torch.__version__}; device {device}, encoder precision "
          f"{resolve_precision('auto', device)}; {box[1, 2] - box[0, 2] + 1} slices of {liver.shape[1]}x"
          f"{liver.shape[2]}")
    times = {name: [] for name in engines}
    shift = 0
    for block in range(args.repeats + 1):  # block 0 loads the model in both and is not counted
        for name, logic in logics.items():
            shift += 1
            image = phantom.image.with_array(phantom.image.array + shift)  # nothing encoded for these voxels yet
            node = add_volume_node(scene, image, f"ct {shift}")
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
            mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(image, box))
            started = time.perf_counter()
            prepared = logic.prepare_segment_in_roi(node, roi, segmentation)
            job = prepared.start()
            while not job.done:  # what the panel's QTimer does
                time.sleep(0.1 if name == "engine process" else 0.01)
            logic.apply(prepared, job.result)
            if block:
                times[name].append(time.perf_counter() - started)
    direct, remote = np.median(times["direct"]), np.median(times["engine process"])
    print(f"direct engine call: {direct:.2f} s per action ({', '.join(f'{t:.2f}' for t in times['direct'])})")
    print(f"through the engine process: {remote:.2f} s ({', '.join(f'{t:.2f}' for t in times['engine process'])})")
    print(f"overhead: {remote - direct:+.2f} s per action, {100 * (remote / direct - 1):+.1f} % "
          "(target: under 0.2 s and 5 %); first displayed slice = whole structure (shown when the job ends)")
    engines["engine process"].stop()


def memory(args) -> None:
    """Run in a fresh interpreter: the Slicer side only (never imports torch)."""
    import slicer.util
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.engine_process import LocalEngine
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from mrml_scene import add_volume_node, mrml_env

    shape = tuple(int(v) for v in args.memory_shape.split(","))
    scene, _ = mrml_env()
    rng = np.random.default_rng(0)
    array = (rng.normal(40, 30, shape)).astype(np.int16)
    array[:, shape[1] // 3: 2 * shape[1] // 3, shape[2] // 3: 2 * shape[2] // 3] += 120
    before = _rss_mb()
    node = add_volume_node(scene, Volume(array, (0.8, 0.8, 1.5), name="ct"), "ct")
    del array
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    scene_data_mb = slicer.util.arrayFromVolume(node).nbytes / 2 ** 20
    engine = LocalEngine(sys.executable)
    logic = MedFoundationSegLogic(scene, Options(refine="none", mode="every_k"), engine)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    box = np.array([[shape[2] // 3, shape[1] // 3, shape[0] // 2 - 6], [2 * shape[2] // 3, 2 * shape[1] // 3,
                                                                     shape[0] // 2 + 5]])
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(mrml_bridge.volume_from_node(node), box))
    peak = 0.0
    for _ in range(2):
        prepared = logic.prepare_segment_in_roi(node, roi, segmentation)
        job = prepared.start()
        while not job.done:
            peak = max(peak, _rss_mb())
            time.sleep(0.1)
        logic.apply(prepared, job.result)
        peak = max(peak, _rss_mb())
    segment_mb = int(np.prod(shape)) / 2 ** 20  # the segment's labelmap: at most one byte a voxel
    engine.stop()
    print(json.dumps({"scene_data_mb": round(scene_data_mb + segment_mb, 1), "rss_before_scene_mb": round(before, 1),
                      "peak_rss_mb": round(peak, 1), "torch_imported": "torch" in sys.modules}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-shape", default="300,512,512", help="z,y,x of the memory check's volume")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        memory(args)
        return
    speed(args)
    result = subprocess.run([sys.executable, __file__, "--memory-only", "--memory-shape", args.memory_shape],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    above = figures["peak_rss_mb"] - figures["rss_before_scene_mb"] - figures["scene_data_mb"]
    print(f"Slicer side ({args.memory_shape} int16 volume, two box actions): peak RSS {figures['peak_rss_mb']:.0f} MB; "
          f"{above:.0f} MB above the scene's data ({figures['scene_data_mb']:.0f} MB) and what slicer-core itself "
          f"holds ({figures['rss_before_scene_mb']:.0f} MB); torch imported: {figures['torch_imported']} "
          "(target: under 300 MB)")


if __name__ == "__main__":
    main()
