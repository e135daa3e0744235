"""The graph cut's narrow band against the whole crop, in one process (not a test).

    python benchmarks/bench_min_cut.py [--shape 60 384 384] [--organs liver stomach spleen pancreas] [--repeats 3]

Per phantom organ: a model-like probability (the truth dilated, shifted by a few voxels, blurred, with noise), the box
and one include click, refined by ``refine_graphcut`` twice: over the whole crop (``band_radius_vox=None``, the
reference) and in the default band (segment/min_cut.py). Prints the crop, the share of it the band opens, the median
seconds of each (after one warm-up call each), their ratio, and how many voxels the two masks differ in (the band is
meant to give the same cut: 0).
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
    whole_params = dataclasses.replace(GraphCutParams(), band_radius_vox=None)
    ratios = []
    for n, organ in enumerate(args.organs):
        truth = phantom.mask(organ)
        inside = np.argwhere(truth)
        annotations = Annotations(box_kji=phantom.box_kji(organ), clicks_kji=inside[[len(inside) // 2]],
                                  click_positive=np.array([True]))
        prob = model_like_probability(truth, n)
        opened = []
        solve = min_cut.min_cut_labels

        def counting(cost_fg, cost_bg, weights, fixed_fg, fixed_bg, solve=solve, opened=opened):
            opened.append((int((~(fixed_fg | fixed_bg)).sum()), fixed_fg.size))
            return solve(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)

        whole_s, whole = timed(lambda: refine_graphcut(image, prob, annotations, spacing_mm=spacing_xyz,
                                                       params=whole_params), args.repeats)
        graphcut.min_cut.min_cut_labels = counting
        try:
            band_s, band = timed(lambda: refine_graphcut(image, prob, annotations, spacing_mm=spacing_xyz),
                                 args.repeats)
        finally:
            graphcut.min_cut.min_cut_labels = solve
        open_voxels, crop_voxels = opened[-1]
        ratios.append(whole_s / band_s)
        print(f"{organ:10s} crop {crop_voxels / 1e6:5.2f} M voxels, band opens {open_voxels / crop_voxels:5.1%}; "
              f"refine_graphcut s: whole crop {whole_s:5.2f}, band {band_s:5.2f} (x{whole_s / band_s:4.2f}); "
              f"voxels differing {int((whole.mask != band.mask).sum())}", flush=True)
    print(f"whole crop / band: median x{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
