"""Which term of the graph cut after a click shrinks a small structure on thick slices: the protocol on one phantom's
organ (LiteMedSAM, the panel's requests, learning off so the cut sees the shown probability), and the cut after the
first click solved again with one GraphCutParams field changed. Prints voxels per slice of the box.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentysixth_thick_cut_terms.py MODEL SEED ORGAN
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from bench_interactive import INITIALS, clicks_ijk, protocol_box_ijk
from click_sim import next_click
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment import refine as refine_module
from MedFoundationSegLib.workflow.actions import EngineRequest, run_request
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session
from seg_metrics import dice

VARIANTS = {"appearance_weight 0": dict(appearance_weight=0.0), "smoothness 2": dict(smoothness=2.0),
            "band_radius_vox None": dict(band_radius_vox=None), "core_seed_fraction 0": dict(core_seed_fraction=0.0),
            "exclude_unlike_tissue off": dict(exclude_unlike_tissue=False), "softness 1": dict(softness=1.0)}
model, seed, organ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
phantom = make_phantom(seed, (48, 128, 128))
truth = phantom.labels.array == phantom.label_ids[organ]
box = protocol_box_ijk(truth)
slices = range(int(box[0][2]), int(box[1][2]) + 1)
per_slice = lambda mask: [int(np.asarray(mask, bool)[k].sum()) for k in slices]  # noqa: E731
cuts = []
solve = refine_module.refine
refine_module.refine = lambda *args, **kw: cuts.append((args, kw)) or solve(*args, **kw)
session = Session(max_predictors=2)
request = EngineRequest("segment_box", phantom.image, Options(model=model, padding_mm=0.0, refine="graphcut",
                                                              **INITIALS["panel"]), {"box_ijk": box.tolist()})
shown = run_request(session, request).case_result()
print(f"phantom {seed} {organ}, box {box.tolist()}, first Dice {dice(shown.mask_kji, truth):.3f}")
print(f"  {'truth':28s}", per_slice(truth))
print(f"  {'shown':28s}", per_slice(shown.mask_kji))
click = next_click(shown.mask_kji, truth, tuple(phantom.image.spacing_mm[::-1]))
params = {"positive_ijk": clicks_ijk([click], True), "negative_ijk": clicks_ijk([click], False)}
request = EngineRequest("refine", phantom.image, Options(model=model, refine="graphcut", learn=False), params,
                        {"mask_kji": shown.mask_kji})
after = run_request(session, request).case_result()
print(f"click 1 {click}: Dice {dice(after.mask_kji, truth):.3f}")
(image, probability, annotations), kw = cuts[-1]
print(f"  {'probability >= 0.5':28s}", per_slice(probability >= 0.5))
print(f"  {'mean probability there':28s}", [round(float(probability[k][probability[k] >= 0.5].mean()), 2)
                                             if (probability[k] >= 0.5).any() else 0 for k in slices])
print(f"  {'the cut as it is':28s}", per_slice(after.mask_kji))
for name, change in VARIANTS.items():
    result = solve(image, probability, annotations, **{**kw, "params": dataclasses.replace(kw["params"], **change)})
    print(f"  {name:28s}", per_slice(result.mask))
