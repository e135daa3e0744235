"""First segmentation (the protocol box, the panel's box-guided walk, graph cut) with the cut's probability shift
forced to each value given: Dice and mask volume / truth volume per structure.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentyfifth_cut_shift_volume_ratio.py MODEL colin|phantom SHIFT ...
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.segment import graphcut
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import AAL_FULL, colin_cases
from seg_metrics import dice

model, data = sys.argv[1], sys.argv[2]
shifts = [float(x) for x in sys.argv[3:]]
if data == "colin":
    _, cases = colin_cases(AAL_FULL[:12], 1)
    vols = [cases[0][1]()]
else:
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from run_benchmarks import PHANTOM_FULL
    vols = []
    for seed in (101, 102, 103):
        ph = make_phantom(seed, (48, 128, 128))
        vols.append((ph.image, ph.labels, {n: ph.label_ids[n] for n in PHANTOM_FULL}))
s = Session(max_predictors=1)
orig = graphcut.cut_probability_shift
res = {}
for image, labels, ids in vols:
  for name, lab in ids.items():
    truth = labels.array == lab
    box = protocol_box_ijk(truth)
    line = []
    for sh in shifts:
        import MedFoundationSegLib.workflow.session as sess
        sess.cut_probability_shift = lambda m, sh=sh: sh
        r = s.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"])
        d = dice(r.mask_kji, truth)
        ratio = r.mask_kji.sum() / truth.sum()
        res.setdefault(sh, []).append((d, ratio))
        line.append(f"shift {sh}: dice {d:.3f} vol {ratio:.2f}")
    print(f"{name:14s}", " | ".join(line), flush=True)
for sh, v in res.items():
    v = np.array(v)
    print(f"shift {sh}: mean dice {v[:,0].mean():.4f} mean volume ratio {v[:,1].mean():.3f}")
