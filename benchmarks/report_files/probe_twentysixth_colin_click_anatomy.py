"""Per click (panel protocol, Colin27 warp 0): the error component clicked, how much of it the click fixed, and what
the click broke elsewhere (new errors), in voxels.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentysixth_colin_click_anatomy.py MODEL STRUCTURES CLICKS
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from scipy import ndimage
from bench_interactive import protocol_box_ijk, INITIALS, clicks_ijk
from click_sim import next_click
from MedFoundationSegLib.workflow.actions import EngineRequest, run_request
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import AAL_FULL, colin_cases
from seg_metrics import dice
model = sys.argv[1]; n = int(sys.argv[2]); nclicks = int(sys.argv[3])
_, cases = colin_cases(AAL_FULL[:n], 1)
image, labels, ids = cases[0][1]()
s = Session(max_predictors=2)
tot = {}
for name, lab in ids.items():
    truth = labels.array == lab; box = protocol_box_ijk(truth)
    req = EngineRequest("segment_box", image, Options(model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"]), {"box_ijk": box.tolist()})
    shown = run_request(s, req).case_result()
    clicks = []
    line = [f"{name:14s} {dice(shown.mask_kji, truth):.3f} FP {int((shown.mask_kji & ~truth).sum())} FN {int((~shown.mask_kji & truth).sum())} |"]
    for step in range(nclicks):
        c = next_click(shown.mask_kji, truth, tuple(image.spacing_mm[::-1]))
        err = shown.mask_kji ^ truth
        comp, _ = ndimage.label(err, np.ones((3, 3, 3), bool)); comp = comp == comp[c[0]]
        clicks.append(c)
        params = {"positive_ijk": clicks_ijk(clicks, True), "negative_ijk": clicks_ijk(clicks, False)}
        req = EngineRequest("refine", image, Options(model=model, refine="graphcut"), params, {"mask_kji": shown.mask_kji})
        new = run_request(s, req).case_result()
        err2 = new.mask_kji ^ truth
        fixed = int((comp & ~err2).sum()); broke = int((err2 & ~err).sum()); otherfix = int((err & ~err2 & ~comp).sum())
        key = "inc" if c[1] else "exc"
        t = tot.setdefault(key, np.zeros(5)); t += [1, comp.sum(), fixed, broke, otherfix]
        line.append(f"{'+' if c[1] else '-'}comp{int(comp.sum())} fixed{fixed} broke{broke} else{otherfix} ->{dice(new.mask_kji, truth):.3f}")
        shown = new
    print(" ".join(line), flush=True)
for k, t in tot.items():
    print(k, "clicks %d comp %.0f fixed %.0f broke %.0f otherfixed %.0f" % tuple(t))
