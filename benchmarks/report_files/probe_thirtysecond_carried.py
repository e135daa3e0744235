"""Scratch: the carried shape alone (the 5 phantoms before each in the pool as truth atlases) against each phantom's
truth: Dice at shares 0.3 and 0.5, and at 0.5 within the protocol box.

    python probe_thirtysecond_carried.py STRUCTURE[,STRUCTURE...]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import protocol_box_ijk
from MedFoundationSegLib.segment import shape_prior
from probe_thirtysecond_fusion import carried_from, phantom_truths
from seg_metrics import dice

data = phantom_truths()
for name in sys.argv[1].split(","):
    ds = []
    for n, (case, image, truths) in enumerate(data):
        t = truths[name]
        box = protocol_box_ijk(t)
        vol = shape_prior.from_box_grid(carried_from(data, n, name, 5, box, image), box, t.shape)
        (i0, j0, k0), (i1, j1, k1) = box
        inside = np.zeros_like(t)
        inside[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = True
        d = [dice(vol >= th, t) for th in (0.3, 0.5)]
        din = dice((vol >= 0.5) & inside, t)
        ds.append(d + [din])
        print(case, name, ' '.join(f'{x:.3f}' for x in d), f'in-box {din:.3f}', flush=True)
    print(name, 'mean', np.mean(ds, 0).round(3))
