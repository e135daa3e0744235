"""Scratch: as probe_thirtysecond_fusion_rules.py with 1, 2 and 3 earlier phantoms as atlases (the blend's gain
2 n / (n + 1)): today's blend against the model's log-odds held within +-2 and +-3.

    python probe_thirtysecond_fusion_rules_by_volumes.py MODEL
"""
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.segment import shape_prior
from probe_thirtysecond_fusion import carried_from, first_masks_path, logit, phantom_truths
from run_benchmarks import PHANTOM_FULL
from seg_metrics import dice

model = sys.argv[1]
out = pickle.load(open(first_masks_path(model), "rb"))
data = phantom_truths()
idx = {c[0]: i for i, c in enumerate(data)}
res = {}
for o in out:
    i = idx[o['case']]
    case, image, truths = data[i]
    name = o['name']
    t = truths[name]
    lm = logit(o['prob'].astype(np.float32))
    for n in (1, 2, 3):
        a = shape_prior.from_box_grid(carried_from(data, i, name, n, o['box'], image), o['box'], t.shape)
        la = logit(0.05 + 0.9 * a)
        g = 2 * n / (n + 1)
        for rule, f in (('current', lm), ('clipL2', np.clip(lm, -2, 2)), ('clipL3', np.clip(lm, -3, 3))):
            res.setdefault((n, rule), {}).setdefault(name, []).append(dice(f + g * la >= 0, t))
    res.setdefault((0, 'model'), {}).setdefault(name, []).append(dice(o['mask'], t))
print(model, 'n rule', ' '.join(f'{n[:8]:>8}' for n in PHANTOM_FULL), '    mean')
for k, v in sorted(res.items()):
    print(f'{k[0]} {k[1]:10}', ' '.join(f'{np.mean(v[n]):8.3f}' for n in PHANTOM_FULL),
          f'{np.mean([x for n in PHANTOM_FULL for x in v[n]]):8.3f}')
