"""Two-model fusion (LiteMedSAM + MobileSAM) from ground-truth 3D boxes, against each model alone.

Each structure is segmented once by each model (no padding, no refinement); every fusion is then computed from those
two probability maps, so the rows differ only in how the two answers are combined:

- ``mean``: the mean of the two probabilities, foreground above 0.5.
- ``agree_cut``: where both models agree the voxel is fixed (foreground or background); only where they disagree
  does a graph cut on the image, with the mean probability as evidence, decide (Options(fusion="models")).
- ``+gc`` rows: the project's graph-cut refinement of that result from the same box, for comparison.

Prints Dice per structure, the share of the two masks' union where they disagree, and the means per dataset.

    python benchmarks/bench_model_fusion.py [--colin-structures 12] [--colin-queries 2] [--phantoms 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision  # noqa: E402
from MedFoundationSegLib.workflow.fusion import fuse_models  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import (  # noqa: E402
    AAL_FULL,
    PHANTOM_FULL,
    box_ijk_of,
    colin_cases,
    machine_description,
    phantom_cases,
)
from seg_metrics import dice  # noqa: E402

VARIANTS = ("litemedsam", "mobilesam", "mean", "agree_cut", "litemedsam+gc", "mobilesam+gc", "mean+gc")


def structure_rows(session: Session, image, truth: np.ndarray) -> dict:
    box_ijk = box_ijk_of(truth)
    results, seconds = {}, {}
    for model in ("litemedsam", "mobilesam"):
        start = time.perf_counter()
        results[model] = session.segment_box(image, box_ijk, model=model, padding_mm=0.0)
        seconds[model] = time.perf_counter() - start
    lite, mobile = results["litemedsam"], results["mobilesam"]
    start = time.perf_counter()
    fused = fuse_models(image, [lite, mobile], box_ijk)
    seconds["agree_cut"] = time.perf_counter() - start
    mean_probability = (lite.probability_kji + mobile.probability_kji) / 2
    masks = {"litemedsam": lite.mask_kji, "mobilesam": mobile.mask_kji, "mean": mean_probability > 0.5,
             "agree_cut": fused.mask_kji}
    for name, result in (("litemedsam", lite), ("mobilesam", mobile)):
        masks[f"{name}+gc"] = session.refine_result(image, result, method="graphcut", box_ijk=box_ijk).mask_kji
    mean_result = type(lite)(mean_probability > 0.5, mean_probability.astype(np.float32), dict(lite.report))
    masks["mean+gc"] = session.refine_result(image, mean_result, method="graphcut", box_ijk=box_ijk).mask_kji
    return dict(dice={name: dice(masks[name], truth) for name in VARIANTS}, disagree=fused.report["disagreement"],
                seconds={k: round(v, 2) for k, v in seconds.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--colin-structures", type=int, default=12)
    parser.add_argument("--colin-queries", type=int, default=2)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=[48, 128, 128])
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}; GT boxes, unpadded",
          flush=True)
    datasets = []
    if args.colin_structures and args.colin_queries:
        datasets.append(("colin27", colin_cases(AAL_FULL[:args.colin_structures], args.colin_queries)[1]))
    if args.phantoms:
        datasets.append(("phantom", phantom_cases(PHANTOM_FULL, args.phantoms, tuple(args.phantom_shape))[1]))
    rows = []
    print(f"{'case':<14}{'structure':<16}{'disagree':>9}  " + "".join(f"{name:>14}" for name in VARIANTS))
    for dataset, cases in datasets:
        for case, make in cases:
            image, labels, ids = make()
            session = Session(max_predictors=2)
            for name, label in ids.items():
                truth = labels.array == label
                if not truth.any():
                    continue
                row = dict(structure_rows(session, image, truth), dataset=dataset, case=case, structure=name)
                rows.append(row)
                print(f"{case:<14}{name:<16}{row['disagree']:>9.2f}  " +
                      "".join(f"{row['dice'][v]:>14.3f}" for v in VARIANTS) + f"   {row['seconds']}", flush=True)
    print()
    for dataset in ("colin27", "phantom"):
        chosen = [row for row in rows if row["dataset"] == dataset]
        if not chosen:
            continue
        means = {v: float(np.mean([row["dice"][v] for row in chosen])) for v in VARIANTS}
        best_single = [max(row["dice"]["litemedsam"], row["dice"]["mobilesam"]) for row in chosen]
        wins = sum(row["dice"]["agree_cut"] > max(row["dice"]["litemedsam"], row["dice"]["mobilesam"])
                   for row in chosen)
        print(f"{dataset} (n={len(chosen)}): " + ", ".join(f"{v} {m:.3f}" for v, m in means.items()) +
              f"; per-structure best single model {np.mean(best_single):.3f}; agree_cut beats both models on "
              f"{wins}/{len(chosen)}; mean disagreement {np.mean([row['disagree'] for row in chosen]):.2f}")
        print("  seconds per structure: " + ", ".join(
            f"{k} {np.mean([row['seconds'][k] for row in chosen]):.1f}" for k in ("litemedsam", "mobilesam",
                                                                                 "agree_cut")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
