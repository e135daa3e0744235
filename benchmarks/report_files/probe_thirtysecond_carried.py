import sys

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
from bench_interactive import protocol_box_ijk
from MedFoundationSegLib.segment import atlas_prior, shape_prior
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice

cases = phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]
data = []
for case, make in cases:
    image, labels, ids = make()
    data.append((case, image, {n: labels.array == ids[n] for n in PHANTOM_FULL}))
for name in sys.argv[1].split(","):
    ds = []
    for n, (case, image, truths) in enumerate(data):
        t = truths[name]
        box = protocol_box_ijk(t)
        others = [data[(n - m) % 10] for m in range(1, 6)]
        imgs = np.array([atlas_prior.image_grid(o[1].array, protocol_box_ijk(o[2][name])) for o in others])
        msks = np.array([atlas_prior.mask_grid(o[2][name], protocol_box_ijk(o[2][name])) for o in others])
        sp = tuple(image.spacing_mm[::-1])
        grid = atlas_prior.carried_shape(imgs, msks, image.array, box, sp)
        vol = shape_prior.from_box_grid(grid, box, t.shape)
        (i0, j0, k0), (i1, j1, k1) = box
        inside = np.zeros_like(t)
        inside[k0:k1+1, j0:j1 + 1, i0:i1 + 1] = True
        d = [dice(vol >= th, t) for th in (0.3, 0.5)]
        din = dice((vol >= 0.5) & inside, t)
        ds.append(d + [din])
        print(case, name, ' '.join(f'{x:.3f}' for x in d), f'in-box {din:.3f}', flush=True)
    print(name, 'mean', np.mean(ds, 0).round(3))
