"""Each model's answer on the middle slice of the protocol box, where the drawn box is the structure's own
(``PredictorSegmenter.segment_fitting_box``), on the ten CT phantoms: its Dice on that slice and the median
intensity under it and under the truth.

    python benchmarks/report_files/probe_thirtyfirst_middle_slice_answers.py STRUCTURE
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
import numpy as np  # noqa: E402
from MedFoundationSegLib.segment.predictor import SlicePredictor  # noqa: E402
from MedFoundationSegLib.segment.segmenter import PredictorSegmenter  # noqa: E402
from run_benchmarks import PHANTOM_FULL, phantom_cases  # noqa: E402


def main() -> None:
    name = sys.argv[1]
    print("case slice  model Dice median_HU ...  truth median_HU")
    for case, make in phantom_cases(PHANTOM_FULL, 10, (48, 128, 128))[1]:
        image, labels, ids = make()
        truth = labels.array == ids[name]
        box = bi.protocol_box_ijk(truth)
        k = (int(box[0][2]) + int(box[1][2])) // 2
        if not truth[k].any():
            continue
        tight = (int(box[0][0]), int(box[0][1]), int(box[1][0]), int(box[1][1]))
        row = [case, k]
        for model in ("litemedsam", "mobilesam"):
            mask, _ = PredictorSegmenter(SlicePredictor(image, model)).segment_fitting_box(k, tight, tight)
            dice = 2 * (mask & truth[k]).sum() / max(int(mask.sum() + truth[k].sum()), 1)
            row += [model, round(float(dice), 3), int(np.median(image.array[k][mask])) if mask.any() else None]
        print(*row, "truth", int(np.median(image.array[k][truth[k]])), flush=True)


if __name__ == "__main__":
    main()
