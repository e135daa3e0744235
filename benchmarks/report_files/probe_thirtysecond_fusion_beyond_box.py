import pickle
import sys

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
from MedFoundationSegLib.segment import shape_prior
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice

model = sys.argv[1]
out = pickle.load(open(f"/tmp/s32/fusion_{model}.pkl", "rb"))
cases = dict(phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1])
res = {}
for case in sorted({o['case'] for o in out}):
    image, labels, ids = cases[case]()
    for o in [o for o in out if o['case'] == case]:
        t = labels.array == ids[o['name']]
        p = o['prob'].astype(np.float32)
        asked = shape_prior.asked_in_plane(t.shape, o['box'], 0)
        for k, m in (('model', o['mask']), ('current', shape_prior.blend(p, o['grid'], 5, o['box']) >= 0.5),
                     ('asked', shape_prior.blend(p, o['grid'], 5, o['box'], asked) >= 0.5)):
            res.setdefault(k, {}).setdefault(o['name'], []).append(dice(m, t))
for k, v in res.items():
    print(model, f'{k:8}', ' '.join(f'{n[:6]} {np.mean(v[n]):.3f}' for n in PHANTOM_FULL), f'mean {np.mean([x for n in PHANTOM_FULL for x in v[n]]):.3f}')
