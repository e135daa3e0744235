"""Probe: the decoder's output layers adapted on one deformed Colin27 copy's Caudate_L, tried on the next copy.

    PYTHONPATH=MedFoundationSeg LR=3e-3 VARIANTS="crop nocrop" python \
        benchmarks/report_files/probe_twentyfourth_decoder_prompts.py mobilesam
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_interactive import protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.segment import decoder_adaptation as da  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, colin_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402


def main() -> None:
    model = sys.argv[1]
    session = Session()
    (image0, labels0, ids0), (image1, labels1, ids1) = [make() for _, make in colin_cases(AAL_FULL[:1], 2)[1]]
    truth0, truth1 = labels0.array == ids0["Caudate_L"], labels1.array == ids1["Caudate_L"]
    box0, box1 = protocol_box_ijk(truth0), protocol_box_ijk(truth1)
    da.LEARNING_RATE = float(os.environ.get("LR", "3e-3"))
    for variant in os.environ.get("VARIANTS", "crop nocrop").split():
        da.CROP_CONTEXT = 10.0 if variant == "nocrop" else 0.5
        start = time.perf_counter()
        layers = da.adapt(session.predictor(image0, model=model), truth0, (*box0[0][:2], *box0[1][:2]),
                          int(box0[0][2]), int(box0[1][2]))
        print("adapt s", round(time.perf_counter() - start, 1))
        predictor = session.predictor(image1, model=model)
        box2d = (*box1[0][:2], *box1[1][:2])
        for name, decoder in (("own", None), ("adapted", da.with_layers(predictor.model.mask_decoder, layers))):
            with predictor.decoding_with(decoder):
                filled = [k for k in range(box1[0][2], box1[1][2] + 1) if truth1[k].any()]
                on_box = [dice(predictor.predict(k, boxes=box2d).masks[0, 0], truth1[k]) for k in filled]
                on_walk = [dice(predictor.predict(k, boxes=da.slice_prompts_xyxy(truth1[k], box2d)[1]).masks[0, 0],
                                truth1[k]) for k in filled]
                result = session.segment_box(image1, box1, model=model, padding_mm=0.0, refine="graphcut")
            print(variant, name, f"box {np.mean(on_box):.3f} walk {np.mean(on_walk):.3f} "
                  f"segment_box {dice(result.mask_kji, truth1):.3f}", flush=True)


if __name__ == "__main__":
    main()
