"""The middle slice of a drawn box: the model's answer, its multimask candidates, and the mask the engine keeps.

The CVPR 2025 protocol box (the 2D box of the structure's middle slice over its slice range) is tight on its middle
slice, and box-guided segmentation starts there. Per structure this prints the Dice, on that slice, of the model's
answer to the box, of its three multimask candidates, and of the mask ``PredictorSegmenter.segment_fitting_box``
keeps (the answer unless its bounding box overlaps the box less than ``FITS_BOX``; then the candidate fitting the box
best); then the means, and those of always taking the best-fitting of the four and of the best candidate in hindsight.

    python benchmarks/bench_middle_slice_fit.py --model litemedsam --dataset colin27 [--queries 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision  # noqa: E402
from MedFoundationSegLib.segment.segmenter import PredictorSegmenter, box_fit  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, machine_description, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--dataset", choices=("colin27", "phantoms"), default="colin27")
    parser.add_argument("--queries", type=int, default=2, help="Colin27 warps, or phantoms")
    args = parser.parse_args()
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}; model {args.model}", flush=True)
    cases = colin_cases(AAL_FULL[:12], args.queries)[1] if args.dataset == "colin27" else \
        phantom_cases(PHANTOM_FULL, args.queries, (48, 128, 128))[1]
    rows = []
    for case, make in cases:
        image, labels, ids = make()
        segmenter = PredictorSegmenter(Session(max_predictors=1).predictor(image, model=args.model))
        for name, label in ids.items():
            truth = labels.array == label
            if not truth.any():
                continue
            (i0, j0, k0), (i1, j1, k1) = protocol_box_ijk(truth)
            middle, box = (k0 + k1) // 2, (i0, j0, i1, j1)
            answer = segmenter.predictor.predict(middle, boxes=box).masks[0, 0]
            candidates = segmenter.predictor.predict(middle, boxes=box, multimask=True).masks[0]
            kept, _ = segmenter.segment_fitting_box(middle, box, box)
            masks = [answer, *candidates]
            fits = [box_fit(m, box) for m in masks]
            scores = [dice(m, truth[middle]) for m in masks]
            rows.append((scores[0], dice(kept, truth[middle]), scores[int(np.argmax(fits))], max(scores[1:])))
            print(f"{case:<12}{name:<15} answer {scores[0]:.3f} (fits {fits[0]:.2f})  candidates " +
                  " ".join(f"{s:.3f} ({f:.2f})" for s, f in zip(scores[1:], fits[1:])) +
                  f"  kept {rows[-1][1]:.3f}", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"\n{args.dataset} {args.model} n={len(rows)}  middle-slice Dice: answer {mean[0]:.3f}  kept {mean[1]:.3f}  "
          f"best-fitting always {mean[2]:.3f}  best candidate in hindsight {mean[3]:.3f}")


if __name__ == "__main__":
    main()
