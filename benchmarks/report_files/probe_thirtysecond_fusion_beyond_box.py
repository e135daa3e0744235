"""Scratch: the first masks of probe_thirtysecond_fusion.py MODEL blended with their 5 carried atlases, today and with
the shape alone beyond the box's rectangle. Needs probe_thirtysecond_shape_beyond_box.patch applied
(``shape_prior.asked_in_plane``).

    python probe_thirtysecond_fusion_beyond_box.py MODEL
"""
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.segment import shape_prior
from probe_thirtysecond_fusion import first_masks_path, phantom_truths
from run_benchmarks import PHANTOM_FULL
from seg_metrics import dice

model = sys.argv[1]
out = pickle.load(open(first_masks_path(model), "rb"))
truth = {(case, name): mask for case, _, truths in phantom_truths() for name, mask in truths.items()}
res = {}
for o in out:
    t = truth[(o['case'], o['name'])]
    p = o['prob'].astype(np.float32)
    asked = shape_prior.asked_in_plane(t.shape, o['box'], 0)
    for k, m in (('model', o['mask']), ('current', shape_prior.blend(p, o['grid'], 5, o['box']) >= 0.5),
                 ('asked', shape_prior.blend(p, o['grid'], 5, o['box'], asked) >= 0.5)):
        res.setdefault(k, {}).setdefault(o['name'], []).append(dice(m, t))
for k, v in res.items():
    print(model, f'{k:8}', ' '.join(f'{n[:6]} {np.mean(v[n]):.3f}' for n in PHANTOM_FULL),
          f'mean {np.mean([x for n in PHANTOM_FULL for x in v[n]]):.3f}')
