"""First Dice of the 60 phantom organs from the protocol box (the panel's drawn-box request), with the walk taught the
organ's intensity by the previous phantom of the pool (its truth's mean and spread: what a signed mask there keeps,
``atlas_prior.appearance``), or not (variant ``none``). Prints per organ the Dice, the taught and the own intensity.

    python benchmarks/report_files/probe_twentyninth_learned_appearance.py MODEL none|taught out.json [localized]

``localized`` (thirtieth session): from the truth's 3D box padded as localized boxes are by default (the batch's
box) instead. ``box_guided`` uses a learned appearance only in a drawn box, so that variant was run against a tree
whose walk was changed to use it in a localized box too (``taught`` is a no-op otherwise).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
import numpy as np  # noqa: E402
from MedFoundationSegLib.segment import propagate  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import PHANTOM_FULL, phantom_cases  # noqa: E402

model, variant, out = sys.argv[1], sys.argv[2], sys.argv[3]
localized = sys.argv[4:] == ["localized"]
cases = phantom_cases(PHANTOM_FULL, 10, (48, 128, 128))[1]
made = [make() for _, make in cases]
names = [c for c, _ in cases]
LEARNED = {}
orig_box_guided = propagate.box_guided
def patched(*a, **kw):
    if variant != "none":
        kw["learned_appearance"] = np.array([LEARNED["stats"]])
    return orig_box_guided(*a, **kw)
propagate.box_guided = patched
rows = []
for n, (case, (image, labels, ids)) in enumerate(zip(names, made)):
    session = Session(max_predictors=2)
    prev_image, prev_labels, _ = made[n - 1]
    for name, label in ids.items():
        truth = labels.array == label
        if not truth.any():
            continue
        pt = prev_labels.array == label
        vals = prev_image.array[pt].astype(float)
        LEARNED["stats"] = (float(vals.mean()), max(float(vals.std()), 1.0))
        if localized:
            k, j, i = np.nonzero(truth)
            box = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
            res = session.segment_box(image, box, model=model, refine="graphcut")
        else:
            box = bi.protocol_box_ijk(truth)
            res = session.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut",
                                      **bi.INITIALS["panel"])
        d = bi.dice(res.mask_kji, truth)
        tv = image.array[truth].astype(float)
        rows.append(dict(case=case, structure=name, dice=d))
        learned = LEARNED["stats"]
        print(f"{case} {name:14s} {d:.3f}  learned {learned[0]:6.1f}+-{learned[1]:5.1f} own {tv.mean():6.1f}+-"
              f"{tv.std():5.1f}", flush=True)
json.dump(rows, open(out, "w"))
print("mean", np.mean([r["dice"] for r in rows]))
