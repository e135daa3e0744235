"""The compiled mask decoder against the eager one on the phantom's liver slice (MEDFOUNDATIONSEG_COMPILE_DECODER=1):
mask pixels before and after the compilation, and the compiled decoder's logits.

    python benchmarks/report_files/probe_twentyninth_compiled_decoder.py
"""
import copy
import os

os.environ["MEDFOUNDATIONSEG_COMPILE_DECODER"] = "1"
import numpy as np  # noqa: E402
from MedFoundationSegLib.core import weights  # noqa: E402
from MedFoundationSegLib.models.build import build_model  # noqa: E402
from MedFoundationSegLib.sampledata.phantoms import make_phantom  # noqa: E402
from MedFoundationSegLib.segment.predictor import SlicePredictor  # noqa: E402
from MedFoundationSegLib.segment.slice_boxes import mask_box_xyxy  # noqa: E402

ph = make_phantom(seed=0, shape_kji=(16, 160, 160))
liver = ph.labels.array == ph.label_ids["liver"]
k = int(np.argmax(liver.sum(axis=(1, 2))))
box = mask_box_xyxy(liver[k])
model = build_model("litemedsam", weights=weights.weights_path("litemedsam"))
p = SlicePredictor(ph.image, copy.deepcopy(model), preprocessing="litemedsam", window="soft_tissue")
before = p.predict(k, boxes=box)
print("state", p.decoder.state, "eager before", before.masks[0, 0].sum(), "truth", liver[k].sum())
print("wait", p.decoder.wait(600))
p.decoder.use_compiled = False
eager_after = p.predict(k, boxes=box)
p.decoder.use_compiled = True
fast = p.predict(k, boxes=box)
print("eager after", eager_after.masks[0, 0].sum(), "compiled", fast.masks[0, 0].sum())
print("logit ranges", before.low_res_logits.min(), before.low_res_logits.max(), fast.low_res_logits.min(),
      fast.low_res_logits.max())
