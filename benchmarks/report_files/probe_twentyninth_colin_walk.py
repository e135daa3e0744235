"""One Colin27 structure's first segmentation from the protocol box (the panel's drawn-box request): every answer of
the walk that failed a stop rule and why, then the mask per slice of the box (after the refinement given).

    python benchmarks/report_files/probe_twentyninth_colin_walk.py MODEL STRUCTURE none|graphcut [CASE_INDEX]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
from MedFoundationSegLib.segment import propagate  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, colin_cases  # noqa: E402


def print_failed_answers() -> None:
    """Make the walk's stop rule print every answer it refuses, and why."""
    rule = getattr(propagate, "stop_reason", None) or propagate._stop_reason  # its name before the thirtieth session

    def reporting_rule(m, iou, prev, *args, **kwargs):
        reason = rule(m, iou, prev, *args, **kwargs)
        if reason is not None:
            print(f"    failed: answer {int(m.sum())} px, previous {int(prev.sum())} px, IoU {iou:.2f}: {reason}")
        return reason

    propagate.stop_reason = propagate._stop_reason = reporting_rule


def main() -> None:
    model, name, refine = sys.argv[1], sys.argv[2], sys.argv[3]
    case, make = colin_cases(AAL_FULL[:12], 2)[1][int(sys.argv[4]) if len(sys.argv) > 4 else 0]
    image, labels, ids = make()
    truth = labels.array == ids[name]
    box = bi.protocol_box_ijk(truth)
    print_failed_answers()
    result = Session().segment_box(image, box, model=model, padding_mm=0.0, refine=refine, **bi.INITIALS["panel"])
    k0, k1 = int(box[0][2]), int(box[1][2])
    print(f"{case} {name} {model} refine {refine}: Dice {bi.dice(result.mask_kji, truth):.3f}")
    print("stop reasons", result.report.get("stop_reasons"))
    print("truth per slice", [int(truth[k].sum()) for k in range(k0, k1 + 1)])
    print("mask per slice ", [int(result.mask_kji[k].sum()) for k in range(k0, k1 + 1)])


if __name__ == "__main__":
    main()
