"""Probe: the drawn middle-slice box as the middle slice's prompt only; the walk and the cut may go beyond it by g of
its larger in-plane side on every side (slices unchanged)."""
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases
from seg_metrics import dice

model, data = sys.argv[1], sys.argv[2]
grows = [float(x) for x in sys.argv[3:]]
if data == "colin":
    _, cases = colin_cases(AAL_FULL[:12], 1)
    vols = [cases[0][1]()]
else:
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    vols = []
    for seed in range(101, 107):
        ph = make_phantom(seed, (48, 128, 128))
        vols.append((ph.image, ph.labels, {n: ph.label_ids[n] for n in PHANTOM_FULL}))
s = Session(max_predictors=1)
res = {}
for image, labels, ids in vols:
    shape_ijk = np.array(image.array.shape[::-1])
    for name, lab in ids.items():
        truth = labels.array == lab
        box = protocol_box_ijk(truth)
        line = []
        for g in grows:
            side = int(max(box[1][0] - box[0][0], box[1][1] - box[0][1]) + 1)
            grown = box.copy()
            m = int(round(g * side))
            grown[0, :2] = np.maximum(box[0, :2] - m, 0)
            grown[1, :2] = np.minimum(box[1, :2] + m, shape_ijk[:2] - 1)
            middle = (box[0, 2] + box[1, 2]) // 2
            drawn = box.copy()
            drawn[0, 2] = drawn[1, 2] = middle
            slabs = [types.SimpleNamespace(box_ijk=drawn)] if g else None
            r = s.segment_box(image, grown, model=model, padding_mm=0.0, refine="graphcut", slabs=slabs,
                              **INITIALS["panel"])
            d = dice(r.mask_kji, truth)
            res.setdefault(g, {}).setdefault(name, []).append(d)
            line.append(f"g{g}: {d:.3f}")
        print(f"{name:14s}", " | ".join(line), flush=True)
for g, per in res.items():
    allv = [v for vs in per.values() for v in vs]
    print(f"g{g}: mean {np.mean(allv):.4f}  " + " ".join(f"{n} {np.mean(v):.3f}" for n, v in per.items()))
