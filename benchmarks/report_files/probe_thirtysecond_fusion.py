"""Scratch: first masks fused with the atlases of 5 other phantoms' truths (registered), by several rules."""
import pickle
import sys

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.segment import atlas_prior
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice

model = sys.argv[1]
cases = phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]
data = []
for case, make in cases:
    image, labels, ids = make()
    data.append((case, image, {n: labels.array == ids[n] for n in PHANTOM_FULL}))
out = []
for n, (case, image, truths) in enumerate(data):
    session = Session(max_predictors=2)
    for name in PHANTOM_FULL:
        t = truths[name]
        box = protocol_box_ijk(t)
        shown = session.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"])
        others = [data[(n - m) % 10] for m in range(1, 6)]
        imgs = np.array([atlas_prior.image_grid(o[1].array, protocol_box_ijk(o[2][name])) for o in others])
        msks = np.array([atlas_prior.mask_grid(o[2][name], protocol_box_ijk(o[2][name])) for o in others])
        grid = atlas_prior.carried_shape(imgs, msks, image.array, box, tuple(image.spacing_mm[::-1]))
        out.append(dict(case=case, name=name, box=box, prob=shown.probability_kji.astype(np.float16),
                        mask=shown.mask_kji, grid=grid))
        print(case, name, f"model {dice(shown.mask_kji, t):.3f}", flush=True)
pickle.dump(out, open(f"/tmp/s32/fusion_{model}.pkl", "wb"))
