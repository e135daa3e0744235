"""Oracle study of the structure head (segment/structure_head.py): is a linear read-out of the cached slice
embeddings worth building corrections and dataset learning on?

Per structure, from the CVPR 2025 protocol box (middle-slice 2D box + z-range, unpadded): the model's guided masks
("sam") and after the graph cut ("shown"); a head fitted on the ground truth of the middle slice only, predicting
the other slices in the box ("mid-slice head", alone, mixed 50/50 with the model's probability, and that mix after
the graph cut); and from the second volume on, the head fitted on the whole truth of the previous volume
("prev-vol head"). Truth stands in for what the user signed; no clicks are simulated.

    python benchmarks/bench_structure_head.py phantom|colin MODEL [COLIN_STRUCTURES]
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.segment import head_learning as hl  # noqa: E402
from MedFoundationSegLib.segment import structure_head as sh  # noqa: E402
from MedFoundationSegLib.workflow.results import CaseResult  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402


def cells_data(predictor, truth, box, slices):
    """(features, targets) of the embedding cells around ``box`` on ``slices``, as the engine samples them."""
    return hl.box_samples(predictor, truth, box, slices)[:2]


def head_probability(predictor, head, box, k0, k1, shape):
    """The head's probability on slices k0..k1 around ``box`` (0 elsewhere)."""
    return hl.head_probability(predictor, head, box, range(k0, k1 + 1), shape)


def graph_cut(image, probability, box_ijk):
    start = CaseResult(probability > 0.5, probability, {})
    return Session.refine_result(image, start, method="graphcut", box_ijk=box_ijk).mask_kji


def main() -> None:
    which, model = sys.argv[1], sys.argv[2]
    if which == "colin":
        cases = colin_cases(AAL_FULL[:int(sys.argv[3])], 2)[1]
    else:
        cases = phantom_cases(PHANTOM_FULL, 2, (48, 128, 128))[1]
    previous = {}
    for case, make in cases:
        image, labels, ids = make()
        session = Session()
        predictor = session.predictor(image, model=model)
        for name, label in ids.items():
            truth = labels.array == label
            if not truth.any():
                continue
            b = protocol_box_ijk(truth)
            box, k0, k1 = (b[0][0], b[0][1], b[1][0], b[1][1]), b[0][2], b[1][2]
            first = session.segment_box(image, b, model=model, padding_mm=0.0, mode="guided")
            shown = session.refine_result(image, first, method="graphcut", box_ijk=b)
            p_sam = first.probability_kji
            start = time.perf_counter()
            head = sh.fit_head(*cells_data(predictor, truth, box, [(k0 + k1) // 2]), model)
            p_head = head_probability(predictor, head, box, k0, k1, truth.shape)
            seconds = time.perf_counter() - start
            inbox = np.zeros_like(truth)
            inbox[k0:k1 + 1, box[1]:box[3] + 1, box[0]:box[2] + 1] = True
            line = (f"{case} {name:14s} sam {dice(first.mask_kji, truth):.3f} shown {dice(shown.mask_kji, truth):.3f}"
                    f" | mid-slice head {dice((p_head > 0.5) & inbox, truth):.3f}"
                    f" mix {dice(((p_head + p_sam) / 2 > 0.5) & inbox, truth):.3f}"
                    f" mixgc {dice(graph_cut(image, (p_head + p_sam) / 2, b), truth):.3f} ({seconds:.2f}s)")
            if name in previous:
                p_prev = head_probability(predictor, previous[name], box, k0, k1, truth.shape)
                line += (f" | prev-vol head {dice((p_prev > 0.5) & inbox, truth):.3f}"
                         f" mix {dice(((p_prev + p_sam) / 2 > 0.5) & inbox, truth):.3f}"
                         f" mixgc {dice(graph_cut(image, (p_prev + p_sam) / 2, b), truth):.3f}")
            previous[name] = sh.fit_head(*cells_data(predictor, truth, box, list(range(k0, k1 + 1))), model)
            print(line, flush=True)


if __name__ == "__main__":
    main()
