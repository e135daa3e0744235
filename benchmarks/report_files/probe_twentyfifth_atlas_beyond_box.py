"""Probe: earlier volumes' atlases may carry the first mask beyond the drawn box (in-plane, within its slices).
Arms: none; atlases (today); atlases beyond the box (model's evidence outside the box taken as unknown, the cut's
box grown to the blended mask). Oracle atlases = other phantoms' truth, as bench_atlas_prior."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_atlas_prior as bap
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment import atlas_prior, shape_prior
from MedFoundationSegLib.workflow import learning
from MedFoundationSegLib.workflow.results import CaseResult
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import PHANTOM_FULL
from seg_metrics import dice

STATE = {"beyond": False, "min_share": 0.5}
orig_refine = Session.refine_result

def add_shape(outcome, prior, box_ijk, image_kji, spacing_kji_mm):
    if prior.shape is None or outcome.probability_kji is None:
        return outcome
    shape = atlas_prior.carried_shape(prior.atlas_images, prior.atlas_masks, image_kji, box_ijk, spacing_kji_mm)
    prob = np.array(outcome.probability_kji, np.float32)
    if STATE["beyond"]:
        (i0, j0, k0), (i1, j1, k1) = np.asarray(box_ijk, int)
        outside = np.ones(prob.shape, bool)
        outside[:, j0:j1 + 1, i0:i1 + 1] = False
        outside[:k0] = False
        outside[k1 + 1:] = False
        carried = shape_prior.from_box_grid(shape, box_ijk, prob.shape)
        prob[outside & (carried >= STATE["min_share"])] = 0.5
    blended = shape_prior.blend(prob, shape, prior.shape_volumes, box_ijk)
    return CaseResult(blended >= 0.5, blended, dict(outcome.report), head=outcome.head)

def refine_result(volume, result, *, box_ijk=None, **kw):
    if STATE["beyond"] and box_ijk is not None and result.mask_kji.any():
        k, j, i = np.nonzero(result.mask_kji)
        b = np.asarray(box_ijk, int).copy()
        b[0, 0], b[0, 1] = min(b[0, 0], i.min()), min(b[0, 1], j.min())
        b[1, 0], b[1, 1] = max(b[1, 0], i.max()), max(b[1, 1], j.max())
        box_ijk = b
    return orig_refine(volume, result, box_ijk=box_ijk, **kw)

learning.add_shape = add_shape
Session.refine_result = staticmethod(refine_result)

model = sys.argv[1]
n_ph = int(sys.argv[2]) if len(sys.argv) > 2 else 6
shares = [float(x) for x in sys.argv[3:]] or [0.5]
phantoms = [make_phantom(101 + n, (48, 128, 128)) for n in range(n_ph)]
res = {}
for n, phantom in enumerate(phantoms):
    session = Session(max_predictors=1)
    for s in PHANTOM_FULL:
        truth = phantom.mask(s)
        box = protocol_box_ijk(truth)
        head = bap.shape_heads(model, phantoms[:n] + phantoms[n + 1:], s)["atlases"]
        arms = [("none", None, False, 0.5), ("atlases", head, False, 0.5)] + \
            [(f"beyond {sh}", head, True, sh) for sh in shares]
        line = []
        for arm, h, beyond, sh in arms:
            STATE["beyond"], STATE["min_share"] = beyond, sh
            r = session.segment_box(phantom.image, box, model=model, padding_mm=0.0, refine="graphcut",
                                    prior_head=h, **INITIALS["panel"])
            d = dice(r.mask_kji, truth)
            res.setdefault(arm, {}).setdefault(s, []).append(d)
            line.append(f"{arm}: {d:.3f}")
        print(f"phantom{101+n} {s:<13}", " | ".join(line), flush=True)
print()
for arm, per in res.items():
    allv = [v for vs in per.values() for v in vs]
    print(f"{arm:<12} mean {np.mean(allv):.4f}  " + " ".join(f"{s} {np.mean(v):.3f}" for s, v in per.items()))
