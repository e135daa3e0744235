"""Per slice of Colin27 structures' first segmentations from the protocol box (the panel's request, as the protocol
benchmark sends it): truth, mask, true and false voxels and the mean intensity under each.

    python benchmarks/report_files/probe_twentyninth_colin_per_slice.py litemedsam,mobilesam Caudate_L
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
from MedFoundationSegLib.workflow.options import Options  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from MedFoundationSegLib.workflow.transport import EngineRequest  # noqa: E402
from run_benchmarks import AAL_FULL, colin_cases  # noqa: E402

models = sys.argv[1].split(",")
wanted = set(sys.argv[2].split(","))
cases = colin_cases(AAL_FULL[:12], 2)[1]
for case, make in cases:
    image, labels, ids = make()
    for name in wanted:
        truth = labels.array == ids[name]
        box = bi.protocol_box_ijk(truth)
        (i0, j0, k0), (i1, j1, k1) = box
        for model in models:
            options = Options(model=model, padding_mm=0.0, refine="graphcut", **bi.INITIALS["panel"])
            request = EngineRequest("segment_box", image, options, {"box_ijk": box.tolist()})
            mask = bi.run_request(Session(), request).case_result().mask_kji
            print(f"{case} {name} {model}: box {box.tolist()} spacing {image.spacing_mm} "
                  f"Dice {bi.dice(mask, truth):.3f}")
            for k in range(k0, k1 + 1):
                t, m, v = truth[k], mask[k], image.array[k]
                fp, fn = m & ~t, t & ~m
                def f(a, v=v):
                    return f"{v[a].mean():6.1f}" if a.any() else "     -"
                print(f"  k{k:3d} truth {int(t.sum()):4d} mask {int(m.sum()):4d} tp {int((t & m).sum()):4d} "
                      f"fp {int(fp.sum()):4d} fn {int(fn.sum()):4d}  I truth {f(t)} fp {f(fp)} fn {f(fn)}  "
                      f"sliceDice {2 * (t & m).sum() / max(1, t.sum() + m.sum()):.2f}")
