"""Simulated correction clicks with the graph-cut refinement, for several click-influence ranges (not a test).

    python benchmarks/bench_click_influence.py colin27 --influence 0,8,12     # 6 left brain structures (Colin27)
    python benchmarks/bench_click_influence.py phantom --influence 0,8,12     # liver, right kidney, spleen of 3 phantoms

Each structure starts from LiteMedSAM's `box_guided` result from its ground-truth box padded by 5 mm (the
localized-box default: a start with real errors), shown refined; then 10 clicks of the simulated user of
click_sim.py (centre of the largest error component), each followed by the graph cut with every click so far.
``--influence 0`` is clicks as hard disks only. Prints Dice after 0, 2, 4, .. 10 clicks and NoC@85/90 per structure,
then the means.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from click_sim import click_session, noc  # noqa: E402
from seg_metrics import dice  # noqa: E402


def start_and_clicks(image, truth, segmenter, influences, pad_mm=5.0):
    """{influence: [Dice before and after each click]} for one structure."""
    from MedFoundationSegLib.segment import propagate, refine

    z, y, x = np.nonzero(truth)
    box_kji = ((z.min(), z.max()), (y.min(), y.max()), (x.min(), x.max()))
    spacing = image.spacing_mm
    segmenter.probabilities.clear()
    start = propagate.box_guided(segmenter, truth.shape, box_kji, spacing_mm=(spacing[0], spacing[1]), pad_mm=pad_mm)
    # The model's probability where it kept a mask, made consistent with that mask (as the pipeline hands it on).
    prob = segmenter.probability_volume(start.segmented)
    prob = np.where(start.mask, np.maximum(prob, 0.5), np.minimum(prob, 0.49)).astype(np.float32)
    box = tuple((max(int(lo) - 2, 0), min(int(hi) + 2, n - 1)) for (lo, hi), n in zip(box_kji, truth.shape))
    array = image.array.astype(np.float32)
    sessions = {}
    for influence in influences:
        params = refine.GraphCutParams(click_influence_mm=influence)

        def refined(positive_kji, negative_kji, params=params):
            clicks = np.concatenate([positive_kji, negative_kji]) if len(positive_kji) + len(negative_kji) else None
            flags = None if clicks is None else np.array([True] * len(positive_kji) + [False] * len(negative_kji))
            annotations = refine.Annotations(box_kji=box, clicks_kji=clicks, click_positive=flags)
            return refine.refine(array, prob, annotations, spacing_mm=spacing, params=params).mask

        shown = refined(np.zeros((0, 3), int), np.zeros((0, 3), int))
        sessions[influence], _ = click_session(refined, shown, truth, tuple(np.asarray(spacing)[::-1]), budget=10)
    return dice(start.mask, truth), sessions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=["colin27", "phantom"])
    parser.add_argument("--influence", default="0,8,12", help="click influence ranges in mm, comma-separated")
    args = parser.parse_args(argv)
    influences = [float(v) for v in args.influence.split(",")]

    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.workflow.session import Session

    cases = []  # (name, image Volume, truth, segmenter)
    if args.data == "colin27":
        from public_data import load_colin27

        image, labels, names = load_colin27()
        ids = {name: value for value, name in names.items()}
        segmenter = Session().segmenter(image, model="litemedsam", device="auto", window="auto",
                                                   axis="axial", cache_mb=4096)
        for name in ("Caudate_L", "Putamen_L", "Thalamus_L", "Hippocampus_L", "Amygdala_L", "Pallidum_L"):
            cases.append((name, image, labels.array == ids[name], segmenter))
    else:
        for seed in (101, 103, 104):
            phantom = make_phantom(seed, (64, 192, 192))
            segmenter = Session().segmenter(phantom.image, model="litemedsam", device="auto", window="auto",
                                                       axis="axial", cache_mb=2048)
            for organ in ("liver", "kidney_right", "spleen"):
                cases.append((f"{seed} {organ}", phantom.image, phantom.labels.array == phantom.label_ids[organ],
                              segmenter))

    results = {influence: [] for influence in influences}
    for name, image, truth, segmenter in cases:
        start, sessions = start_and_clicks(image, truth, segmenter, influences)
        line = [f"{name:16s} start {start:.3f}"]
        for influence, dices in sessions.items():
            results[influence].append(dices)
            line.append(f"influence {influence:g} mm: " + " ".join(f"{v:.2f}" for v in dices[::2])
                        + f" NoC85 {noc(dices, 0.85)} NoC90 {noc(dices, 0.90)}")
        print(" | ".join(line), flush=True)
    print("\nmean over structures (Dice after 0 / 1 / 3 / 5 / 10 clicks, NoC@85, NoC@90):")
    for influence, sessions in results.items():
        table = np.array(sessions)
        print(f"  influence {influence:g} mm: " + " / ".join(f"{table[:, i].mean():.3f}" for i in (0, 1, 3, 5, 10))
              + f", NoC85 {np.mean([noc(list(d), 0.85) for d in table]):.1f}"
              + f", NoC90 {np.mean([noc(list(d), 0.90) for d in table]):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
