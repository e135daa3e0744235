"""Per slice of a structure's first segmentation from the protocol box (the panel's drawn-box request): the truth
inside and outside the box, the mask, its true voxels, the mean intensity under the mask and the truth, and which
labels the mask's wrong voxels carry (0: the phantom's fat and background).

    python benchmarks/report_files/probe_twentyeighth_drawn_box_walk.py litemedsam pancreas 103 107
"""

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_interactive as bi  # noqa: E402
import numpy as np  # noqa: E402
from MedFoundationSegLib.workflow.options import Options  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from MedFoundationSegLib.workflow.transport import EngineRequest  # noqa: E402
from run_benchmarks import PHANTOM_FULL, phantom_cases  # noqa: E402


def main() -> None:
    model, organ, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3:])
    for case, make in phantom_cases(PHANTOM_FULL, 10, (48, 128, 128))[1]:
        if case[-3:] not in wanted:
            continue
        image, labels, ids = make()
        names = {label: name for name, label in ids.items()}
        truth = labels.array == ids[organ]
        box = bi.protocol_box_ijk(truth)
        (i0, j0, k0), (i1, j1, k1) = box
        inside = np.zeros_like(truth)
        inside[:, j0:j1 + 1, i0:i1 + 1] = True
        request = EngineRequest("segment_box", image, Options(model=model, padding_mm=0.0, refine="graphcut",
                                                              **bi.INITIALS["panel"]), {"box_ijk": box.tolist()})
        mask = bi.run_request(Session(), request).case_result().mask_kji
        print(f"{case} {organ} {model}: box ijk {box.tolist()}, Dice {bi.dice(mask, truth):.3f}")
        for k in range(k0, k1 + 1):
            t, m, values = truth[k], mask[k], image.array[k]
            wrong = collections.Counter(names.get(int(v), str(int(v))) for v in labels.array[k][m & ~t])
            under = f"{values[m].mean():5.0f}" if m.any() else "    -"
            print(f"  slice {k:2d}: truth in the box {int((t & inside[k]).sum()):4d}, outside "
                  f"{int((t & ~inside[k]).sum()):4d}; mask {int(m.sum()):4d}, true {int((t & m).sum()):4d}; mean HU "
                  f"under the mask {under}, under the truth {values[t].mean():5.0f}; wrong voxels "
                  f"{dict(wrong.most_common(2))}")


if __name__ == "__main__":
    main()
