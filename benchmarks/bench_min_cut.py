"""The graph cut's solvers against the whole-grid one, in one process (not a test).

    python benchmarks/bench_min_cut.py [--shape 60 384 384] [--organs liver stomach spleen pancreas] [--repeats 3]

Per phantom organ: a model-like probability (the truth dilated, shifted by a few voxels, blurred, with noise), the box
and one include click, refined by ``refine_graphcut`` three ways: ``grid``, every voxel of the crop a node of
PyMaxflow's grid graph and the hard seeds held by prohibitive terminal capacities (the solver before
segment/min_cut.py, the reference); ``open``, only the voxels that are not seeds (``band_radius_vox=None``); ``band``,
the default narrow band. Prints the crop, the share of it each graph holds, the median seconds of each (after one
warm-up call each; the kept graph is refilled, see min_cut.py), their ratios to ``grid``, and how many voxels each
mask differs from the grid's in (meant: 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.sampledata.phantoms import make_phantom  # noqa: E402
from MedFoundationSegLib.segment import graphcut, min_cut  # noqa: E402
from MedFoundationSegLib.segment.refine import Annotations, GraphCutParams, refine_graphcut  # noqa: E402
from run_benchmarks import machine_description  # noqa: E402


def model_like_probability(truth: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shifted = np.roll(ndimage.binary_dilation(truth, iterations=2), 3, axis=2)
    blurred = ndimage.gaussian_filter(shifted.astype(np.float32), (0, 1.5, 1.5))
    return np.clip(blurred * 0.9 + 0.05 + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)


def grid_labels(cost_fg, cost_bg, weights, fixed_fg, fixed_bg):
    """Every voxel a node of PyMaxflow's grid graph, the fixed ones held by prohibitive terminal capacities."""
    import maxflow

    graph = maxflow.Graph[float](int(cost_fg.size), int(3 * cost_fg.size))
    nodes = graph.add_grid_nodes(cost_fg.shape)
    for axis, w in enumerate(weights):
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        graph.add_grid_edges(nodes, weights=w, structure=structure, symmetric=True)
    hard = 1e3 * (max(float(w.max()) for w in weights) * 6 + float(max(cost_fg.max(), cost_bg.max())) + 1.0)
    graph.add_grid_tedges(nodes, np.where(fixed_fg, hard, np.where(fixed_bg, 0.0, cost_bg)),
                          np.where(fixed_bg, hard, np.where(fixed_fg, 0.0, cost_fg)))
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)


def timed(call, repeats: int) -> tuple[float, object]:
    result = call()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(60, 384, 384))
    parser.add_argument("--organs", nargs="+", default=["liver", "stomach", "spleen", "pancreas"])
    parser.add_argument("--phantom", type=int, default=101)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_description() + "; float32 numpy, PyMaxflow, one process", flush=True)
    phantom = make_phantom(args.phantom, tuple(args.shape))
    image = phantom.image.array
    spacing_xyz = phantom.image.spacing_mm
    print(f"phantom {args.phantom}, shape {tuple(args.shape)}, spacing (x, y, z) "
          f"{tuple(round(float(v), 2) for v in spacing_xyz)} mm")
    arms = {"grid": (dataclasses.replace(GraphCutParams(), band_radius_vox=None), grid_labels),
            "open": (dataclasses.replace(GraphCutParams(), band_radius_vox=None), None),
            "band": (GraphCutParams(), None)}
    solve = min_cut.min_cut_labels
    ratios = {"open": [], "band": []}
    for n, organ in enumerate(args.organs):
        truth = phantom.mask(organ)
        inside = np.argwhere(truth)
        annotations = Annotations(box_kji=phantom.box_kji(organ), clicks_kji=inside[[len(inside) // 2]],
                                  click_positive=np.array([True]))
        prob = model_like_probability(truth, n)
        seconds, masks, held = {}, {}, {}
        for arm, (params, solver) in arms.items():
            opened = []

            def counting(cost_fg, cost_bg, weights, fixed_fg, fixed_bg, solver=solver, opened=opened, arm=arm):
                nodes = fixed_fg.size if arm == "grid" else int((~(fixed_fg | fixed_bg)).sum())
                opened.append((nodes, fixed_fg.size))
                return (solver or solve)(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)

            graphcut.min_cut.min_cut_labels = counting
            try:
                seconds[arm], result = timed(lambda params=params: refine_graphcut(
                    image, prob, annotations, spacing_mm=spacing_xyz, params=params), args.repeats)
            finally:
                graphcut.min_cut.min_cut_labels = solve
            masks[arm], held[arm] = result.mask, opened[-1][0] / opened[-1][1]
            crop_voxels = opened[-1][1]
        for arm in ("open", "band"):
            ratios[arm].append(seconds["grid"] / seconds[arm])
        print(f"{organ:10s} crop {crop_voxels / 1e6:5.2f} M voxels; " + "; ".join(
            f"{arm} {held[arm]:4.0%} of it, {seconds[arm]:5.2f} s (x{seconds['grid'] / seconds[arm]:4.2f}), "
            f"differing {int((masks[arm] != masks['grid']).sum())}" for arm in arms), flush=True)
    print("grid / open: median x%.2f; grid / band: median x%.2f" % (statistics.median(ratios["open"]),
                                                                    statistics.median(ratios["band"])))


if __name__ == "__main__":
    main()
