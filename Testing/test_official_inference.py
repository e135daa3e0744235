"""Each model's full 2D prediction (slice + box -> mask) matches its official inference on real slices, in fp32.

The reference is ``official_inference.py``: the official scripts' steps written again independently (OpenCV, PIL,
scikit-image, plain torch on the raw network). Real slices: the MNI152 T1 MRI and a brain CT, fetched from PyPI.
"""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.segment.intensity import apply_window, resolve_window
from MedFoundationSegLib.segment.predictor import SlicePredictor, load_model
from MedFoundationSegLib.segment.preprocessing import preprocessing_for, slice_transform, slices_to_input
from official_inference import OFFICIAL, OFFICIAL_INPUT, real_slice_cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def cases():
    return real_slice_cases()


@pytest.mark.parametrize("model_name, per_volume", [("litemedsam", 8), ("mobilesam", 3)])
def test_the_product_matches_the_official_inference_on_real_slices(cases, model_name, per_volume):
    model = load_model(model_name, device="cpu")
    chosen = [c for c in cases if c[0].startswith("mni")][:per_volume] + \
        [c for c in cases if c[0].startswith("ct")][:per_volume]
    scores = {}
    predictors = {}
    for label, volume, index, box in chosen:
        key = id(volume)
        if key not in predictors:
            predictors[key] = SlicePredictor(volume, model_name, device="cpu", precision="fp32")
        predictor = predictors[key]
        ours = predictor.predict(index, boxes=np.asarray(box, float)).masks[0, 0]
        official = OFFICIAL[model_name](model, predictor.windowed_slice(index), box)
        assert official.sum() > 50, (label, "the official inference found nothing: a useless test slice")
        scores[label] = dice(ours, official)
    assert len(scores) == 2 * per_volume
    assert min(scores.values()) >= 0.999, scores  # the issue asks 0.99; measured 0.9996 or more


@pytest.mark.parametrize("model_name", ["litemedsam", "mobilesam", "medsam_vit_b"])
def test_the_model_input_equals_the_official_tensor_on_real_slices(cases, model_name):
    """The preprocessing alone, on real slices: the same float32 tensor as the official code, to rounding."""
    prep = preprocessing_for(model_name)
    for label, volume, index, _ in cases if model_name == "litemedsam" else cases[::3]:
        plane = apply_window(volume.array[index], resolve_window("auto", volume.array))
        ours = slices_to_input(plane, slice_transform(plane.shape, prep), prep)
        official = OFFICIAL_INPUT[model_name](plane)
        assert ours.shape == official.shape, label
        assert float((ours - official).abs().max()) < 1e-5, (label, float((ours - official).abs().max()))


def test_the_reference_mode_is_the_official_litemedsam_3d_procedure():
    """The reference procedure (Session mode "reference") against the independent CVPR24 3D procedure, fp32, on 8
    slices of the real MNI152 T1."""
    from MedFoundationSegLib.core.volume import read_volume
    from MedFoundationSegLib.sampledata.public_volumes import public_volume_path
    from MedFoundationSegLib.segment.reference import reference_litemedsam
    from MedFoundationSegLib.segment.segmenter import PredictorSegmenter
    from official_inference import litemedsam_official_3d

    t1 = read_volume(public_volume_path("mni152_t1"))
    wm = read_volume(public_volume_path("mni152_wm")).array[80:88] > 128
    wm[:, :, wm.shape[2] // 2:] = False  # the left hemisphere's white matter
    k, j, i = np.nonzero(wm)
    box = (int(i.min()), int(j.min()), 80 + int(k.min()), int(i.max()), int(j.max()), 80 + int(k.max()))
    predictor = SlicePredictor(t1, "litemedsam", device="cpu", precision="fp32")
    ours = reference_litemedsam(PredictorSegmenter(predictor), t1.array.shape, box).mask
    official = litemedsam_official_3d(load_model("litemedsam", device="cpu"), apply_window(t1.array, predictor.window),
                                      box)
    assert official.sum() > 1000
    assert dice(ours, official) >= 0.99, dice(ours, official)
