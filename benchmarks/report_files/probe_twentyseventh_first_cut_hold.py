"""Whether the cut after a click on thick slices keeps what the first cut of a shifted model decided: the model's own
probability for one phantom organ's protocol box (LiteMedSAM), its first cut (shifted, as ``Session.segment_box`` cuts
it) with the probability handed on as before (``agree_with_mask``) and held (``hold_inside``), and each cut again,
without clicks, at the smoothness of the cut after a click on thick slices. Prints voxels (and true voxels) per slice.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentyseventh_first_cut_hold.py MODEL SEED ORGAN
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment.graphcut import cut_probability_shift
from MedFoundationSegLib.workflow.session import CLICK_SMOOTHNESS, Session
from seg_metrics import dice

model, seed, organ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
phantom = make_phantom(seed, (48, 128, 128))
truth = phantom.labels.array == phantom.label_ids[organ]
box = protocol_box_ijk(truth)
slices = range(int(box[0][2]), int(box[1][2]) + 1)


def show(name: str, mask: np.ndarray) -> None:
    cells = " ".join(f"{mask[k].sum()}/{(mask[k] & truth[k]).sum()}" for k in slices)
    print(f"{name:<44} Dice {dice(mask, truth):.3f}  {cells}")


session = Session()
raw = session.segment_box(phantom.image, box, model=model, padding_mm=0.0, refine="none", **INITIALS["panel"])
print(f"phantom {seed} {organ}, {model}, slices {slices.start}-{slices.stop - 1}; voxels/true voxels per slice")
show("truth", truth)
show("the model's mask", raw.mask_kji)
for hold in (False, True):
    first = session.refine_result(phantom.image, raw, method="graphcut", box_ijk=box, exact_slices_axis=0,
                                  probability_shift=cut_probability_shift(model), hold_mask=hold)
    again = session.refine_result(phantom.image, first, method="graphcut", box_ijk=box, exact_slices_axis=0,
                                  smoothness=CLICK_SMOOTHNESS["thick"])
    show(f"first cut, handed on {'held' if hold else 'as before'}", first.mask_kji)
    show(f"  cut again at smoothness {CLICK_SMOOTHNESS['thick']:g}, no click", again.mask_kji)
