"""First segmentation on Colin27 copy 0 (12 structures) and its Dice after a global boundary offset of +-1 voxel
(3D 6-connected, and in-plane only)."""
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import AAL_FULL, colin_cases
from seg_metrics import dice

model = sys.argv[1]
_, cases = colin_cases(AAL_FULL[:12], 1)
image, labels, ids = cases[0][1]()
s = Session(max_predictors=1)
c3 = ndimage.generate_binary_structure(3, 1)
c2 = np.zeros((3, 3, 3), bool)
c2[1] = ndimage.generate_binary_structure(2, 1)
rows = []
for name, lab in ids.items():
    truth = labels.array == lab
    box = protocol_box_ijk(truth)
    r = s.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"])
    m = r.mask_kji
    v = [dice(m, truth), dice(ndimage.binary_erosion(m, c3), truth), dice(ndimage.binary_dilation(m, c3), truth),
         dice(ndimage.binary_erosion(m, c2), truth), dice(ndimage.binary_dilation(m, c2), truth)]
    rows.append(v)
    print(f"{name:14s} vol {m.sum()/truth.sum():.2f} as is {v[0]:.3f} erode3d {v[1]:.3f} dilate3d {v[2]:.3f} erode2d {v[3]:.3f} dilate2d {v[4]:.3f}", flush=True)
rows = np.array(rows)
print("mean as is / erode3d / dilate3d / erode2d / dilate2d:", " / ".join(f"{x:.4f}" for x in rows.mean(0)))
print("best per structure:", f"{rows.max(1).mean():.4f}")
