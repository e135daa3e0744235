"""Intensity windows and per-model slice preprocessing: pure array code, no network (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MedFoundationSegLib.segment.intensity import (
    Window,
    WindowError,
    apply_window,
    load_presets,
    percentile_window,
    resolve_window,
)
from MedFoundationSegLib.segment.preprocessing import (
    Preprocessing,
    PreprocessingError,
    UnknownModelError,
    preprocessing_for,
    slice_transform,
    slices_to_input,
)

SAM_MODELS = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam")


def test_level_width_and_min_max_windows():
    assert resolve_window({"level": 40, "width": 400}) == Window(-160.0, 240.0)
    assert resolve_window({"min": -500, "max": 1000}) == Window(-500.0, 1000.0)
    assert resolve_window((0, 10)) == Window(0.0, 10.0)
    assert resolve_window("lung") == Window.from_level_width(-500, 1400)


def test_every_preset_resolves():
    volume = np.linspace(-1000, 1000, 8000, dtype=np.float32).reshape(20, 20, 20)
    for name in load_presets()["presets"]:
        window = resolve_window(name, volume)
        assert window.high > window.low


def test_apply_window_maps_ends_and_clips():
    window = Window(-100.0, 155.0)
    out = apply_window(np.array([-1000, -100, 0, 155, 3000], dtype=np.int16), window)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 100, 255, 255]


def test_percentile_window_ignores_outliers():
    rng = np.random.default_rng(0)
    volume = rng.normal(500.0, 50.0, (30, 40, 40)).astype(np.float32)
    volume[0, 0, :5] = 1e6  # a few hot pixels must not stretch the window
    window = percentile_window(volume, 0.5, 99.5)
    assert 300 < window.low < 420 and 580 < window.high < 700


def test_auto_window_tells_ct_from_mr():
    ct = np.full((4, 16, 16), -1000, np.int16)
    ct[:, 4:12, 4:12] = 40
    mr = np.random.default_rng(1).uniform(0, 800, (4, 16, 16)).astype(np.float32)
    assert resolve_window("auto", ct) == resolve_window("soft_tissue")
    mr_window = resolve_window("auto", mr)
    assert 0 <= mr_window.low < 20 and 780 < mr_window.high <= 800


@pytest.mark.parametrize("spec, message", [
    ("no_such_preset", "unknown window preset"),
    ({"level": 40}, "exactly"),
    ({"level": 40, "width": 0}, "positive"),
    ({"min": 5, "max": 5}, "high > low"),
    (3.5, "cannot interpret"),
])
def test_bad_window_specs_raise_clear_errors(spec, message):
    with pytest.raises(WindowError, match=message):
        resolve_window(spec, np.zeros((2, 2, 2)))


def test_nan_and_non_numeric_images_are_refused():
    with pytest.raises(WindowError, match="NaN"):
        apply_window(np.array([[0.0, np.nan]]), Window(0, 1))
    with pytest.raises(WindowError, match="dtype"):
        apply_window(np.ones((2, 2), dtype=bool), Window(0, 1))


def test_registry_preprocessing_matches_training_recipes():
    lite = preprocessing_for("litemedsam")
    assert (lite.input_size, lite.resize, lite.interpolation, lite.normalize, lite.box_scale) == (
        256, "longest_side", "opencv_area", "minmax", "floor_longest")
    medsam = preprocessing_for("medsam_vit_b")
    assert (medsam.input_size, medsam.resize, medsam.normalize, medsam.pad, medsam.interpolation, medsam.postprocess) \
        == (1024, "stretch", "minmax", "none", "skimage_cubic", "direct_probability")
    for name in SAM_MODELS:
        sam = preprocessing_for(name)
        assert (sam.input_size, sam.resize, sam.normalize, sam.interpolation, sam.box_scale) == (
            1024, "longest_side", "mean_std", "pil_bilinear", "per_axis")
        assert sam.pixel_mean == (123.675, 116.28, 103.53) and sam.pixel_std == (58.395, 57.12, 57.375)


def test_unknown_models_and_blocks_raise():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        preprocessing_for("nope")
    with pytest.raises(UnknownModelError, match="no preprocessing block"):
        preprocessing_for("medlam")
    with pytest.raises(PreprocessingError, match="resize"):
        Preprocessing.from_dict({"input_size": 256, "resize": "crop"})
    with pytest.raises(PreprocessingError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"input_size": 256, "colour": "red"})


def test_longest_side_keeps_the_physical_aspect():
    lite = preprocessing_for("litemedsam")
    assert slice_transform((512, 512), lite).resized_hw == (256, 256)
    assert slice_transform((100, 200), lite).resized_hw == (128, 256)
    # A coronal slice of 40 rows at 5 mm and 200 columns at 1 mm is 200 x 200 mm: square in the model frame.
    assert slice_transform((40, 200), lite, pixel_spacing_yx=(5.0, 1.0)).resized_hw == (256, 256)
    assert slice_transform((100, 200), preprocessing_for("medsam_vit_b")).resized_hw == (1024, 1024)


def test_litemedsam_input_is_minmax_of_resized_slice_zero_padded():
    lite = preprocessing_for("litemedsam")
    transform = slice_transform((64, 128), lite)
    image = np.tile(np.arange(128, dtype=np.uint8), (64, 1)) + 50  # 50..177, ramps along x
    tensor = slices_to_input(image, transform, lite)
    assert tensor.shape == (1, 3, 256, 256)
    top = tensor[0, :, :128]
    assert torch.isclose(top.min(), torch.tensor(0.0)) and torch.isclose(top.max(), torch.tensor(1.0))
    assert torch.equal(tensor[0, 0], tensor[0, 2])  # grey repeated to 3 channels
    assert tensor[0, :, 128:].abs().max() == 0  # bottom padding


def test_sam_input_uses_mean_std_per_channel():
    sam = preprocessing_for("mobilesam")
    transform = slice_transform((32, 32), sam)
    tensor = slices_to_input(np.full((2, 32, 32), 128, np.uint8), transform, sam)
    assert tensor.shape == (2, 3, 1024, 1024)
    expected = [(128 - m) / s for m, s in zip(sam.pixel_mean, sam.pixel_std)]
    assert np.allclose(tensor[0, :, 10, 10].numpy(), expected, atol=1e-5)


def test_prompts_in_and_masks_out_round_trip():
    lite = preprocessing_for("litemedsam")
    transform = slice_transform((100, 200), lite)  # resized to 128 x 256: x scale 1.28, y scale 1.28
    # LiteMedSAM's official box: int(b * 256 / max(H, W)), rounded down; SAM's: per axis, unrounded.
    assert np.array_equal(transform.boxes_to_input([[10, 20, 110, 70]]), [[12, 25, 140, 89]])
    sam = slice_transform((100, 200), preprocessing_for("mobilesam"))
    assert np.allclose(sam.boxes_to_input([[10, 20, 110, 70]]), [[51.2, 102.4, 563.2, 358.4]])
    assert np.allclose(transform.points_to_input([[50, 50]]), [[64, 64]])
    # A rectangle of positive logits in the low-res frame comes back as the same rectangle on the slice grid.
    low_res = torch.full((1, 1, 256, 256), -10.0)
    low_res[..., 25:90, 12:141] = 10.0
    mask = (transform.logits_to_slice(low_res) > 0)[0, 0].numpy()
    assert mask.shape == (100, 200)
    ys, xs = np.nonzero(mask)
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 70) <= 1 and abs(xs.min() - 10) <= 1 and abs(xs.max() - 110) <= 1
    # ... and a slice mask becomes a mask prompt covering the same region of the low-res frame.
    prompt = transform.slice_mask_to_low_res(mask)
    assert prompt.shape == (256, 256)
    assert prompt[60, 80] > 0 and prompt[5, 5] < 0 and prompt[200, 80] < 0


def test_slices_must_be_windowed_uint8_of_the_right_shape():
    lite = preprocessing_for("litemedsam")
    transform = slice_transform((16, 16), lite)
    with pytest.raises(PreprocessingError, match="uint8"):
        slices_to_input(np.zeros((16, 16), np.float32), transform, lite)
    with pytest.raises(PreprocessingError, match="shape"):
        slices_to_input(np.zeros((16, 17), np.uint8), transform, lite)
