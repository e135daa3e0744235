"""Time of the weak-supervision refinements on a CT-sized volume (not a test).

    python benchmarks/bench_refine.py                       # 100x512x512 phantom, liver / spleen / left kidney
    python benchmarks/bench_refine.py --shape 100,512,512 --organs liver

The model's probability is stood in for by the organ's truth with a wrong boundary (dilated on one side, eroded on
the other, Gaussian-blurred, with noise), so that every method has real work to do; the constraints are the organ's
3D box and its 6 extreme points, as the pipeline passes them. Library imports and first calls are made on a toy
problem before timing. Prints seconds, the solved crop's size and Dice before/after per method and organ. Target of
the pipeline issue: graph cut under 2 s on a 512x512x100 case.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_metrics import dice  # noqa: E402


def stand_in_probability(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible, imperfect model output: boundary shifted outward on one side and inward on the other."""
    grown = ndimage.binary_dilation(truth, iterations=3)
    shrunk = ndimage.binary_erosion(truth, iterations=3)
    x_mid = int(np.mean(np.nonzero(truth)[2]))
    wrong = truth.copy()
    wrong[..., x_mid:] = grown[..., x_mid:]
    wrong[..., :x_mid] = shrunk[..., :x_mid]
    prob = ndimage.gaussian_filter(wrong.astype(np.float32), sigma=(0.5, 1.5, 1.5))
    return np.clip(prob + rng.normal(0, 0.08, prob.shape).astype(np.float32), 0, 1)


def extreme_points_kji(truth: np.ndarray) -> np.ndarray:
    coords = np.argwhere(truth)
    return np.array([coords[coords[:, axis].argmin()] for axis in range(3)]
                    + [coords[coords[:, axis].argmax()] for axis in range(3)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="100,512,512", help="phantom shape z,y,x")
    parser.add_argument("--organs", nargs="+", default=["liver", "spleen", "kidney_left"])
    parser.add_argument("--methods", nargs="+", default=["graphcut", "geodesic", "growcut"])
    parser.add_argument("--repeat", type=int, default=2, help="runs per method and organ (the first is reported)")
    args = parser.parse_args(argv)

    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.segment import refine

    shape = tuple(int(v) for v in args.shape.split(","))
    phantom = make_phantom(7, shape)
    image = phantom.image.array.astype(np.float32)
    spacing = phantom.image.spacing_mm
    rng = np.random.default_rng(0)

    toy = np.zeros((12, 32, 32), bool)
    toy[2:10, 6:26, 6:26] = True
    toy_annotations = refine.Annotations(box_kji=((2, 9), (6, 25), (6, 25)), clicks_kji=np.array([[6, 16, 16]]),
                                         click_positive=np.array([True]))
    cases = []
    for organ in args.organs:
        truth = phantom.labels.array == phantom.label_ids[organ]
        coords = np.argwhere(truth)
        box = tuple((int(lo), int(hi)) for lo, hi in zip(coords.min(0), coords.max(0)))
        cases.append((organ, truth, stand_in_probability(truth, rng),
                      refine.Annotations(box_kji=box, extreme_points_kji=extreme_points_kji(truth))))

    print(f"phantom {image.shape} (z,y,x), spacing {tuple(round(s, 2) for s in spacing)} mm (x,y,z)")
    print(f"{'organ':<13}{'voxels':>9}  {'method':<9}{'seconds (runs)':>18}  {'crop (z,y,x)':>16}  "
          f"Dice before -> after")
    worst, again = {}, {}
    for method in args.methods:  # method by method, as a user works: a GrowCut run leaves the next first graph
        # cut on a large crop slower once (2.3-2.9 s instead of 1.5 s on the liver; not understood), so the order
        # of --methods matters for the first calls.
        # Imports (max-flow, ITK) and first-call set-up on a toy problem, outside the timings.
        refine.refine(np.where(toy, 50.0, -50.0).astype(np.float32), toy.astype(np.float32), toy_annotations,
                      method=method, spacing_mm=(1, 1, 1))
        for organ, truth, prob, case_annotations in cases:
            before = dice(prob > 0.5, truth)
            seconds = []
            for _ in range(args.repeat):  # the first call on a large crop also pays for fresh memory pages
                start = time.perf_counter()
                result = refine.refine(image, prob, case_annotations, method=method, spacing_mm=spacing)
                seconds.append(time.perf_counter() - start)
            worst[method] = max(worst.get(method, 0.0), seconds[0])
            again[method] = max(again.get(method, 0.0), min(seconds[1:], default=seconds[0]))
            crop = tuple(s.stop - s.start for s in result.crop)
            print(f"{organ:<13}{int(truth.sum()):>9}  {method:<9}{' / '.join(f'{x:.2f}' for x in seconds):>18}  "
                  f"{str(crop):>16}  {before:.3f} -> {dice(result.mask, truth):.3f}", flush=True)
    print("slowest first call per method: " + ", ".join(f"{m} {s:.2f} s" for m, s in worst.items())
          + f" (graph-cut target < 2 s: {'met' if worst.get('graphcut', 99) < 2 else 'NOT met'})")
    if args.repeat > 1:
        print("slowest repeated call per method: " + ", ".join(f"{m} {s:.2f} s" for m, s in again.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
