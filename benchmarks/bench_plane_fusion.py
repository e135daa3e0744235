"""Plane fusion on CT phantoms from ground-truth 3D boxes: axial only against axial + coronal + sagittal with their
probabilities averaged (Options(fusion="planes")). Prints Dice per organ and the mean, and seconds per structure.

    python benchmarks/bench_plane_fusion.py [--seeds 3 5] [--shape 40 256 256] [--model litemedsam]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 256, 256])
    parser.add_argument("--model", default="litemedsam")
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}, model {args.model}, GT boxes, no refinement")
    rows: dict[str, list[tuple[float, float]]] = {"axial": [], "planes": []}
    for seed in args.seeds:
        phantom = make_phantom(seed, shape_kji=tuple(args.shape))
        session = Session(max_predictors=3)
        for organ in ORGANS:
            truth = phantom.labels.array == phantom.label_ids[organ]
            k, j, i = np.nonzero(truth)
            box = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
            line = [f"seed {seed} {organ:13s}"]
            for fusion in ("none", "planes"):
                start = time.perf_counter()
                result = session.segment_box(phantom.image, box, Options(model=args.model, refine="none",
                                                                         fusion=fusion, drawn_box_padding_mm=0.0))
                seconds = time.perf_counter() - start
                score = dice(result.mask_kji, truth)
                rows["axial" if fusion == "none" else "planes"].append((score, seconds))
                line.append(f"{'axial' if fusion == 'none' else 'fused'} {score:.3f} ({seconds:.0f} s)")
            print("  ".join(line), flush=True)
    for name, values in rows.items():
        scores, seconds = np.array(values).T
        print(f"{name:7s} mean Dice {scores.mean():.3f}  min {scores.min():.3f}  mean {seconds.mean():.1f} s "
              f"per structure (first call encodes the slices)")


if __name__ == "__main__":
    main()
