import pickle
import sys

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
from bench_interactive import protocol_box_ijk
from MedFoundationSegLib.segment import atlas_prior, shape_prior
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice

model = sys.argv[1]
out = pickle.load(open(f"/tmp/s32/fusion_{model}.pkl", "rb"))
cases = phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]
data = []
for case, make in cases:
    image, labels, ids = make()
    data.append((case, image, {n: labels.array == ids[n] for n in PHANTOM_FULL}))
idx = {c[0]: i for i, c in enumerate(data)}
def logit(p):
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))
res = {}
for o in out:
    i = idx[o['case']]
    case, image, truths = data[i]
    t = truths[o['name']]
    name = o['name']
    lm = logit(o['prob'].astype(np.float32))
    for n in (1, 2, 3):
        others = [data[(i - m) % 10] for m in range(1, n + 1)]
        imgs = np.array([atlas_prior.image_grid(x[1].array, protocol_box_ijk(x[2][name])) for x in others])
        msks = np.array([atlas_prior.mask_grid(x[2][name], protocol_box_ijk(x[2][name])) for x in others])
        grid = atlas_prior.carried_shape(imgs, msks, image.array, o['box'], tuple(image.spacing_mm[::-1]))
        a = shape_prior.from_box_grid(grid, o['box'], t.shape)
        la = logit(0.05 + 0.9 * a)
        g = 2 * n / (n + 1)
        for rule, f in (('current', lm), ('clipL2', np.clip(lm, -2, 2)), ('clipL3', np.clip(lm, -3, 3))):
            res.setdefault((n, rule), {}).setdefault(name, []).append(dice(f + g * la >= 0, t))
    res.setdefault((0, 'model'), {}).setdefault(name, []).append(dice(o['mask'], t))
print(model, 'n rule', ' '.join(f'{n[:8]:>8}' for n in PHANTOM_FULL), '    mean')
for k, v in sorted(res.items()):
    print(f'{k[0]} {k[1]:10}', ' '.join(f'{np.mean(v[n]):8.3f}' for n in PHANTOM_FULL), f'{np.mean([x for n in PHANTOM_FULL for x in v[n]]):8.3f}')
