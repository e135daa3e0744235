"""How far the first cut's probability shift may reach beyond the model's mask.

LiteMedSAM's masks stop short of a structure's edge, so its first graph cut shifts the model's probability up
(registry ``refinement.cut_probability_shift``); ``GraphCutParams.shift_reach_per_radius`` limits the shift to a number
of the mask's equivalent radii on each slice. Per structure, for the protocol box (bench_interactive.py): the truth's
volume, then the model's mask and each reach's first cut as (volume / truth's volume, Dice).

    python benchmarks/bench_first_cut_shift.py phantoms [--shape 48 128 128] [--count 10] [--reach none 0.5 1.0 1.5]
    python benchmarks/bench_first_cut_shift.py colin27 [--count 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import INITIALS, protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.segment import refine  # noqa: E402
from MedFoundationSegLib.segment.graphcut import GraphCutParams, cut_probability_shift  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, machine_description, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402

MODEL = "litemedsam"


def with_reach(reach: float | None):
    """GraphCutParams whose default reach is ``reach`` (what Session.refine_result builds)."""
    def make(**kwargs):
        return dataclasses.replace(GraphCutParams(**kwargs), shift_reach_per_radius=reach)
    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["phantoms", "colin27"])
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    parser.add_argument("--count", type=int, default=None, help="phantoms (default 10) or Colin27 warps (default 2)")
    parser.add_argument("--reach", nargs="+", default=["none", "0.5", "1.0", "1.5"])
    args = parser.parse_args()
    reaches = [None if r == "none" else float(r) for r in args.reach]
    if args.dataset == "colin27":
        cases = colin_cases(AAL_FULL[:12], args.count or 2)[1]
    else:
        cases = phantom_cases(PHANTOM_FULL, args.count or 10, tuple(args.shape))[1]
    print(f"{machine_description()}; {MODEL}, shift {cut_probability_shift(MODEL)}", flush=True)
    firsts = {reach: [] for reach in reaches}
    original = refine.GraphCutParams
    try:
        for case, make in cases:
            image, labels, ids = make()
            session = Session(max_predictors=1)
            for name, label in ids.items():
                truth = labels.array == label
                if not truth.any():
                    continue
                box_ijk = protocol_box_ijk(truth)
                raw = session.segment_box(image, box_ijk, model=MODEL, padding_mm=0.0, refine="none",
                                          **INITIALS["panel"])
                cells = [f"{case:<12}{name:<16}truth {int(truth.sum()):>7}",
                         f"model {raw.mask_kji.sum() / truth.sum():.2f} {dice(raw.mask_kji, truth):.3f}"]
                for reach in reaches:
                    refine.GraphCutParams = with_reach(reach)
                    cut = session.refine_result(image, raw, method="graphcut", box_ijk=box_ijk,
                                                probability_shift=cut_probability_shift(MODEL))
                    firsts[reach].append(dice(cut.mask_kji, truth))
                    cells.append(f"reach {reach} {cut.mask_kji.sum() / truth.sum():.2f} {firsts[reach][-1]:.3f}")
                print("  ".join(cells), flush=True)
    finally:
        refine.GraphCutParams = original
    print("mean first Dice: " + "  ".join(f"reach {r} {np.mean(d):.3f}" for r, d in firsts.items()))


if __name__ == "__main__":
    main()
