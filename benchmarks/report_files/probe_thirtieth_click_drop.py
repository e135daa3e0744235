"""One click of the protocol that lowered Dice: the panel's first segmentation of a Colin27 structure, the
protocol's clicks before it, then that click; per slice the truth and the voxels the click added and removed, right
and wrong, and the correction's report.

    python benchmarks/report_files/probe_thirtieth_click_drop.py MODEL STRUCTURE CASE_INDEX STEP [colin|phantom]

CASE_INDEX: 0/1 the deformed Colin27 copies; with ``phantom``, n for phantom 101 + n (the protocol's 48x128x128).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
import numpy as np  # noqa: E402
from MedFoundationSegLib.workflow.options import Options  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from MedFoundationSegLib.workflow.transport import EngineRequest  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, phantom_cases  # noqa: E402


def main() -> None:
    model, name, index, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dataset = sys.argv[5] if len(sys.argv) > 5 else "colin"
    cases = colin_cases(AAL_FULL[:12], 2)[1] if dataset == "colin" else \
        phantom_cases(PHANTOM_FULL, index + 1, (48, 128, 128))[1]
    case, make = cases[index]
    image, labels, ids = make()
    truth = labels.array == ids[name]
    box = bi.protocol_box_ijk(truth)
    session = Session()
    request = EngineRequest("segment_box", image, Options(model=model, padding_mm=0.0, refine="graphcut",
                                                          **bi.INITIALS["panel"]), {"box_ijk": box.tolist()})
    shown = bi.run_request(session, request).case_result()
    clicks = []
    for n in range(step):
        before = shown.mask_kji
        click = bi.next_click(before, truth, tuple(image.spacing_mm[::-1]))
        clicks.append(click)
        params = {"positive_ijk": bi.clicks_ijk(clicks, True), "negative_ijk": bi.clicks_ijk(clicks, False)}
        request = EngineRequest("refine", image, Options(model=model, refine="graphcut"), params,
                                {"mask_kji": before})
        shown = bi.run_request(session, request).case_result()
        print(f"click {n + 1} {click}: Dice {bi.dice(before, truth):.3f} -> {bi.dice(shown.mask_kji, truth):.3f}")
    after = shown.mask_kji
    print(f"{case} {name} {model}, box {box.tolist()}; the last click's changes per slice:")
    for k in np.flatnonzero((before ^ after).any(axis=(1, 2))):
        added, removed = after[k] & ~before[k], before[k] & ~after[k]
        print(f"  k {k:3d} truth {int(truth[k].sum()):4d} before {int(before[k].sum()):4d} after {int(after[k].sum()):4d}"
              f"  added right {int((added & truth[k]).sum()):4d} wrong {int((added & ~truth[k]).sum()):4d}"
              f"  removed right {int((removed & ~truth[k]).sum()):4d} wrong {int((removed & truth[k]).sum()):4d}")
    volume = image.array
    added, removed = after & ~before, before & ~after
    for label, where in (("truth", truth), ("shown before", before), ("added right", added & truth),
                         ("added wrong", added & ~truth), ("removed right", removed & ~truth),
                         ("removed wrong", removed & truth)):
        if where.any():
            print(f"  intensity {label}: {volume[where].mean():.1f} +- {volume[where].std():.1f} ({int(where.sum())} voxels)")
    print("report:", {key: value for key, value in shown.report.items() if key != "predicted_iou"})


if __name__ == "__main__":
    main()
