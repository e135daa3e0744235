"""Scratch: how much of each structure lies outside the protocol box in-plane, and how much a reach learned from the
other phantoms (their per-slice extents in box coordinates) would cover."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import protocol_box_ijk
from run_benchmarks import PHANTOM_FULL, phantom_cases

cases = phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]
data = []
for case, make in cases:
    image, labels, ids = make()
    data.append((case, {n: labels.array == ids[n] for n in PHANTOM_FULL}))

def rel_extents(truth, box, nz=24):
    """per relative z (nz bins over the box's z-range) the in-plane extent in box units (x0,y0,x1,y1), 0..1 = box"""
    (i0, j0, k0), (i1, j1, k1) = box
    w, h = i1 - i0 + 1, j1 - j0 + 1
    out = {}
    for k in range(k0, k1 + 1):
        s = truth[k]
        if not s.any():
            continue
        r, c = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        z = (k - k0) / max(k1 - k0, 1)
        out[k] = (z, ((c[0] - i0) / w, (r[0] - j0) / h, (c[-1] + 1 - i0) / w, (r[-1] + 1 - j0) / h))
    return out

for name in PHANTOM_FULL:
    outs, covs, grow = [], [], []
    for n, (case, truths) in enumerate(data):
        t = truths[name]
        box = protocol_box_ijk(t)
        (i0, j0, k0), (i1, j1, k1) = box
        inside = np.zeros_like(t)
        inside[:, j0:j1 + 1, i0:i1 + 1] = True
        outs.append(1 - (t & inside).sum() / t.sum())
        # learned reach from the others: per relative z, union of their extents (nearest relative z)
        others = [rel_extents(d[1][name], protocol_box_ijk(d[1][name])) for m, d in enumerate(data) if m != n]
        reach = np.zeros_like(t)
        w, h = i1 - i0 + 1, j1 - j0 + 1
        for k in range(k0, k1 + 1):
            z = (k - k0) / max(k1 - k0, 1)
            ex = []
            for o in others:
                if not o:
                    continue
                zs = np.array([v[0] for v in o.values()])
                best = list(o.values())[int(np.argmin(np.abs(zs - z)))][1]
                ex.append(best)
            ex = np.array(ex)
            x0, y0 = np.min(ex[:, 0]), np.min(ex[:, 1])
            x1, y1 = np.max(ex[:, 2]), np.max(ex[:, 3])
            a0, b0 = int(np.floor(i0 + x0 * w)), int(np.floor(j0 + y0 * h))
            a1, b1 = int(np.ceil(i0 + x1 * w)), int(np.ceil(j0 + y1 * h))
            reach[k, max(b0, 0):b1, max(a0, 0):a1] = True
        reach |= inside & (np.arange(t.shape[0])[:, None, None] >= k0) & (np.arange(t.shape[0])[:, None, None] <= k1)
        covs.append((t & reach).sum() / t.sum())
        box_area = inside[k0:k1 + 1].sum()
        grow.append(reach.sum() / box_area)
    print(f"{name:14} outside box {np.mean(outs):.2f} ({' '.join(f'{o:.2f}' for o in outs)}); learned reach (union of 9 others) covers {np.mean(covs):.2f} min {np.min(covs):.2f}, area x{np.mean(grow):.2f}")
