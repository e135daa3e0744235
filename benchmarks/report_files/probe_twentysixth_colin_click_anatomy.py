"""Per click (panel protocol, Colin27 warp 0): the error component clicked, how much of it the click fixed, and what
the click broke elsewhere (new errors), in voxels.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentysixth_colin_click_anatomy.py MODEL STRUCTURES CLICKS
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from bench_interactive import INITIALS, clicks_ijk, protocol_box_ijk
from click_sim import next_click
from MedFoundationSegLib.workflow.actions import EngineRequest, run_request
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import AAL_FULL, colin_cases
from scipy import ndimage
from seg_metrics import dice

model, count, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_, cases = colin_cases(AAL_FULL[:count], 1)
image, labels, ids = cases[0][1]()
session = Session(max_predictors=2)
totals = {}
for name, label in ids.items():
    truth = labels.array == label
    box = protocol_box_ijk(truth)
    request = EngineRequest("segment_box", image, Options(model=model, padding_mm=0.0, refine="graphcut",
                                                          **INITIALS["panel"]), {"box_ijk": box.tolist()})
    shown = run_request(session, request).case_result()
    clicks = []
    line = [f"{name:14s} {dice(shown.mask_kji, truth):.3f} FP {int((shown.mask_kji & ~truth).sum())} "
            f"FN {int((~shown.mask_kji & truth).sum())} |"]
    for _ in range(budget):
        click = next_click(shown.mask_kji, truth, tuple(image.spacing_mm[::-1]))
        error = shown.mask_kji ^ truth
        components, _ = ndimage.label(error, np.ones((3, 3, 3), bool))
        clicked = components == components[click[0]]
        clicks.append(click)
        params = {"positive_ijk": clicks_ijk(clicks, True), "negative_ijk": clicks_ijk(clicks, False)}
        request = EngineRequest("refine", image, Options(model=model, refine="graphcut"), params,
                                {"mask_kji": shown.mask_kji})
        after = run_request(session, request).case_result()
        error_after = after.mask_kji ^ truth
        fixed = int((clicked & ~error_after).sum())
        broke = int((error_after & ~error).sum())
        fixed_elsewhere = int((error & ~error_after & ~clicked).sum())
        kind = "inc" if click[1] else "exc"
        totals.setdefault(kind, np.zeros(5))
        totals[kind] += [1, clicked.sum(), fixed, broke, fixed_elsewhere]
        line.append(f"{'+' if click[1] else '-'}comp{int(clicked.sum())} fixed{fixed} broke{broke} "
                    f"else{fixed_elsewhere} ->{dice(after.mask_kji, truth):.3f}")
        shown = after
    print(" ".join(line), flush=True)
for kind, total in totals.items():
    print(kind, "clicks %d comp %.0f fixed %.0f broke %.0f otherfixed %.0f" % tuple(total))
