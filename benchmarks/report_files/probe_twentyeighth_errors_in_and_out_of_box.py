"""Where a structure's error lies after 0 and 5 protocol clicks (the panel's requests): false negatives and false
positives inside the protocol box's rectangle (every slice) and outside it, and where each click landed.

    python benchmarks/report_files/probe_twentyeighth_errors_in_and_out_of_box.py litemedsam pancreas 10
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
import numpy as np  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import PHANTOM_FULL, phantom_cases  # noqa: E402


def main() -> None:
    model, organ, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    masks = []
    measure = bi.dice

    def keeping_masks(mask, truth):  # the protocol measures every mask it shows: keep them
        masks.append(np.array(mask, bool))
        return measure(mask, truth)

    bi.dice = keeping_masks
    for case, make in phantom_cases(PHANTOM_FULL, count, (48, 128, 128))[1]:
        image, labels, ids = make()
        truth = labels.array == ids[organ]
        (i0, j0, _), (i1, j1, _) = bi.protocol_box_ijk(truth)
        inside = np.zeros_like(truth)
        inside[:, j0:j1 + 1, i0:i1 + 1] = True
        masks.clear()
        row = bi.run_structure(Session(max_predictors=2), image, truth, model, "panel", bi.PROTOCOL_CLICKS)
        print(f"{case} {organ} {model}: truth {int(truth.sum())} voxels, {int((truth & ~inside).sum())} outside the box")
        for step in (0, bi.PROTOCOL_CLICKS):
            mask = masks[step]
            missed, extra = truth & ~mask, mask & ~truth
            print(f"  after {step} clicks: Dice {row['dices'][step]:.3f}; missed inside {int((missed & inside).sum())},"
                  f" outside {int((missed & ~inside).sum())}; false inside {int((extra & inside).sum())}, outside "
                  f"{int((extra & ~inside).sum())}")
        print("  clicks (include +, exclude -; inside i or outside o the box): " + " ".join(
            ("+" if positive else "-") + ("i" if inside[tuple(click)] else "o") for click, positive in row["clicks"]))


if __name__ == "__main__":
    main()
