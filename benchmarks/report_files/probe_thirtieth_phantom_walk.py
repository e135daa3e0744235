"""One CT phantom organ's first segmentation from the protocol box (the panel's drawn-box request): every answer of
the walk that failed a stop rule and why, the Dice and the mask per slice against the truth.

    python benchmarks/report_files/probe_thirtieth_phantom_walk.py MODEL PHANTOM_INDEX STRUCTURE [REFINE]

REFINE: the first segmentation's refinement, "graphcut" (the panel's) unless given ("none": the walk's own masks).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_interactive as bi  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from probe_twentyninth_colin_walk import print_failed_answers  # noqa: E402
from run_benchmarks import PHANTOM_FULL, phantom_cases  # noqa: E402


def main() -> None:
    model, index, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    case, make = phantom_cases(PHANTOM_FULL, 10, (48, 128, 128))[1][index]
    image, labels, ids = make()
    truth = labels.array == ids[name]
    box = bi.protocol_box_ijk(truth)
    print_failed_answers()
    refine = sys.argv[4] if len(sys.argv) > 4 else "graphcut"
    result = Session().segment_box(image, box, model=model, padding_mm=0.0, refine=refine, **bi.INITIALS["panel"])
    k0, k1 = int(box[0][2]), int(box[1][2])
    print(f"{case} {name} {model}: Dice {bi.dice(result.mask_kji, truth):.3f}")
    print("truth per slice", [int(truth[k].sum()) for k in range(k0, k1 + 1)])
    print("mask per slice ", [int(result.mask_kji[k].sum()) for k in range(k0, k1 + 1)])
    print("right per slice", [int((result.mask_kji[k] & truth[k]).sum()) for k in range(k0, k1 + 1)])


if __name__ == "__main__":
    main()
