"""Scratch: first Dice of the panel's drawn-box segmentation with the walk's cap = the rectangle (today), the
rectangle with the truth's per-slice boxes (an oracle reach), and no cap. Needs probe_thirtysecond_reach_argument.patch
applied (``propagate.box_guided``'s ``reach_xyxy``)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.segment import propagate
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice

model = sys.argv[1]
names = sys.argv[2].split(",")
REACH = {}
orig = propagate.box_guided
def patched(*a, **kw):
    kw["reach_xyxy"] = REACH.get("now")
    return orig(*a, **kw)
propagate.box_guided = patched
cases = phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]
res = {}
for case, make in cases:
    image, labels, ids = make()
    session = Session(max_predictors=2)
    for name in names:
        t = labels.array == ids[name]
        box = protocol_box_ijk(t)
        oracle = {}
        for k in range(t.shape[0]):
            if t[k].any():
                r, c = np.flatnonzero(t[k].any(1)), np.flatnonzero(t[k].any(0))
                oracle[k] = (int(c[0]), int(r[0]), int(c[-1]), int(r[-1]))
        full = {k: (0, 0, t.shape[2] - 1, t.shape[1] - 1) for k in range(t.shape[0])}
        line = []
        for arm, reach in (("rect", None), ("oracle", oracle), ("nocap", full)):
            REACH["now"] = reach
            shown = session.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"])
            d = dice(shown.mask_kji, t)
            res.setdefault((name, arm), []).append(d)
            line.append(f"{arm} {d:.3f}")
        print(case, name, *line, flush=True)
for (name, arm), v in sorted(res.items()):
    print(name, arm, f"{np.mean(v):.3f}")
