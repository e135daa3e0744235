"""Scratch: the first masks of probe_thirtysecond_fusion.py MODEL blended with their 5 carried atlases by several rules
(the model's log-odds held within +-L, the shape's times g); mean Dice per structure.

    python probe_thirtysecond_fusion_rules.py MODEL
"""
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.segment import shape_prior
from probe_thirtysecond_fusion import first_masks_path, logit, phantom_truths
from run_benchmarks import PHANTOM_FULL
from seg_metrics import dice

model = sys.argv[1]
out = pickle.load(open(first_masks_path(model), "rb"))
truth = {(case, name): mask for case, _, truths in phantom_truths() for name, mask in truths.items()}
rules = {}
rules['model'] = lambda o, a: o['mask']
rules['current'] = lambda o, a: shape_prior.blend(o['prob'].astype(np.float32), o['grid'], 5, o['box']) >= 0.5
rules['atlas'] = lambda o, a: a >= 0.5
for L in (2, 3, 4):
    for g in (1.67, 3):
        def r(o, a, L=L, g=g):
            pa = 0.05 + 0.9 * a
            return np.clip(logit(o['prob'].astype(np.float32)), -L, L) + g * logit(pa) >= 0
        rules[f'clipL{L}g{g}'] = r
res = {}
for o in out:
    t = truth[(o['case'], o['name'])]
    a = shape_prior.from_box_grid(o['grid'], o['box'], t.shape)
    for k, r in rules.items():
        res.setdefault(k, {}).setdefault(o['name'], []).append(dice(r(o, a), t))
print(model, 'rule', ' '.join(f'{n[:8]:>8}' for n in PHANTOM_FULL), '    mean')
for k, v in res.items():
    print(f'{k:14}', ' '.join(f'{np.mean(v[n]):8.3f}' for n in PHANTOM_FULL),
          f'{np.mean([x for n in PHANTOM_FULL for x in v[n]]):8.3f}')
