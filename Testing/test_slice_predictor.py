"""SlicePredictor with the real LiteMedSAM weights on a small CT-like phantom.

The encoder costs about a second per slice here, so the whole file encodes about ten slices: one predictor per
concern, each on its own copy of one loaded model. Weights come from the active cache (MEDFOUNDATIONSEG_CACHE or the
user cache); when they are missing the tests fail with the `medfoundationseg weights fetch litemedsam` command to run.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from MedFoundationSegLib.core import weights
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.models.build import build_model
from MedFoundationSegLib.runtime.compiled_decoder import ENVIRONMENT_SWITCH, CompiledDecoder
from MedFoundationSegLib.runtime.encoder_runtime import STEM_BANDS_PER_IMAGE, DeviceError, EncoderRuntime, select_device
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment.embedding_cache import EmbeddingCache
from MedFoundationSegLib.segment.predictor import (
    ESCALATION_MAX_EXPECTED_LOSS,
    Cancelled,
    PredictorError,
    SlicePredictor,
    clip_box_to_slice,
    expected_dice,
)
from MedFoundationSegLib.segment.preprocessing import UnknownModelError

EMBEDDING_BYTES = 256 * 64 * 64 * 2  # one LiteMedSAM slice embedding stored in fp16


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def bbox_xyxy(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=0, shape_kji=(16, 160, 160))


@pytest.fixture(scope="module")
def liver_slice(phantom) -> int:
    liver = phantom.labels.array == phantom.label_ids["liver"]
    return int(np.argmax(liver.sum(axis=(1, 2))))


@pytest.fixture(scope="module")
def model():
    return build_model("litemedsam", weights=weights.weights_path("litemedsam"))


def make_predictor(phantom, model, **kwargs) -> SlicePredictor:
    """Each predictor gets its own copy of the module's model: a CPU bf16 runtime rounds its encoder's weights in
    place, which must not leak into the fp32 predictors of later tests (it did on CPUs without native bf16)."""
    return SlicePredictor(phantom.image, copy.deepcopy(model), preprocessing="litemedsam", window="soft_tissue",
                          **kwargs)


@pytest.fixture(scope="module")
def axial(phantom, model):
    return make_predictor(phantom, model)


# --- accuracy ---------------------------------------------------------------------------------------------------
def test_box_around_organs_segments_them(phantom, axial, liver_slice):
    scores = {}
    for index in (liver_slice, liver_slice + 2):
        labels = phantom.labels.array[index]
        organs = [name for name in ("liver", "spleen", "stomach", "kidney_left", "kidney_right")
                  if (labels == phantom.label_ids[name]).sum() > 150]
        truths = [labels == phantom.label_ids[name] for name in organs]
        prediction = axial.predict(index, boxes=[bbox_xyxy(t) for t in truths])  # several boxes, one call
        assert prediction.masks.shape == (len(organs), 1, 160, 160) and prediction.masks.dtype == bool
        assert prediction.iou.shape == (len(organs), 1)
        scores.update({f"{name}@{index}": dice(prediction.masks[i, 0], truth)
                       for i, (name, truth) in enumerate(zip(organs, truths))})
    assert len(scores) >= 4, scores
    assert np.mean(list(scores.values())) >= 0.9, scores
    assert max(scores.values()) >= 0.95 and min(scores.values()) >= 0.75, scores


def test_optimized_encoder_keeps_the_fp32_masks(phantom, axial, liver_slice):
    """BN folding, channels-last, batching and the CPU's native precision must not change the masks."""
    plain_model = build_model("litemedsam", weights=weights.weights_path("litemedsam"))
    plain = make_predictor(phantom, plain_model, precision="fp32", optimize=False)
    assert plain.runtime.folded_bn == 0 and plain.runtime.precision == "fp32"
    assert axial.runtime.folded_bn > 0
    labels = phantom.labels.array[liver_slice]
    organs = [name for name in ("liver", "stomach") if (labels == phantom.label_ids[name]).sum() > 150]
    boxes = [bbox_xyxy(labels == phantom.label_ids[name]) for name in organs]
    fast, slow = axial.predict(liver_slice, boxes=boxes), plain.predict(liver_slice, boxes=boxes)
    for i, name in enumerate(organs):
        assert dice(fast.masks[i, 0], slow.masks[i, 0]) >= 0.98, (name, axial.runtime.precision)


def test_multimask_points_and_mask_prompts(phantom, axial, liver_slice):
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    box = bbox_xyxy(liver)
    multi = axial.predict(liver_slice, boxes=box, multimask=True)
    assert multi.masks.shape == (1, 3, 160, 160) and multi.iou.shape == (1, 3)
    best_masks, best_iou = multi.best()
    assert best_masks.shape == (1, 160, 160) and best_iou[0] == multi.iou.max()
    # Box plus a positive click inside the liver and a negative one in the background.
    ys, xs = np.nonzero(liver)
    inside = [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]
    with_clicks = axial.predict(liver_slice, boxes=box, points=[inside, [2.0, 2.0]], point_labels=[1, 0])
    assert dice(with_clicks.masks[0, 0], liver) >= 0.85
    # The previous prediction's low-res logits as a mask prompt keep the result.
    best = int(multi.iou[0].argmax())
    again = axial.predict(liver_slice, boxes=box, mask_input=multi.low_res_logits[0, best][None])
    assert dice(again.masks[0, 0], liver) >= 0.85
    # An edited slice mask turned into a prompt pulls the prediction towards it.
    from_mask = axial.predict(liver_slice, boxes=box, mask_input=axial.mask_to_prompt(liver))
    assert dice(from_mask.masks[0, 0], liver) >= 0.9
    # Clicks alone are accepted (LiteMedSAM was trained on boxes only, so no accuracy is asked of them here).
    clicks = axial.predict(liver_slice, points=[[inside], [[20.0, 30.0]]], point_labels=[[1], [0]])
    assert clicks.masks.shape == (2, 1, 160, 160) and np.isfinite(clicks.iou).all()


# --- precision escalation ---------------------------------------------------------------------------------------
def test_expected_dice_matches_simulated_laplace_errors():
    """The rule's estimate is the mean Dice under the error model it assumes: check it by simulation."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 40.0, xx - 50.0)
    scale = 0.12
    fields = {"sharp disc": 4.0 * (20.0 - radius), "flat disc": 0.05 * (20.0 - radius),
              "small disc": 0.5 * (3.0 - radius)}
    estimates = {}
    for name, field in fields.items():
        logits = torch.from_numpy(field)
        estimates[name] = float(expected_dice(logits, 0.0, scale))
        simulated = [dice((field + rng.laplace(0.0, scale, field.shape) > 0), field > 0) for _ in range(200)]
        loss, simulated_loss = 1.0 - estimates[name], 1.0 - float(np.mean(simulated))
        assert loss == pytest.approx(simulated_loss, rel=0.15, abs=0.001), name  # first-order in the flips
    # A sharp boundary keeps its mask, a flat (ambiguous) or tiny one does not: only those escalate.
    allowed = 1.0 - ESCALATION_MAX_EXPECTED_LOSS
    assert estimates["sharp disc"] >= allowed > estimates["flat disc"]
    assert estimates["small disc"] < allowed
    assert float(expected_dice(torch.full((8, 8), -30.0), 0.0, scale)) == pytest.approx(1.0)  # empty and certain
    assert float(expected_dice(torch.zeros(8, 8), 0.0, scale)) == 0.0  # empty but undecided
    assert float(expected_dice(torch.zeros(8, 8), 0.0, 0.0)) == 1.0  # exact precision: nothing moves
    batch = expected_dice(torch.stack([torch.from_numpy(f) for f in fields.values()])[None], 0.0, scale)
    assert batch.shape == (1, 3)


def test_unstable_slices_are_reencoded_in_fp32_once(phantom, model, liver_slice):
    """Escalation replaces the fast embedding by the fp32 one (same masks as an fp32 predictor), once per slice."""
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    box = bbox_xyxy(liver)
    fast = make_predictor(phantom, model, precision="bf16", escalate=True)
    assert fast.escalate and fast.runtime.reduced_precision
    fast.escalation_error_scale = 1e6  # nothing is stable under an unbounded error: every new slice escalates
    first = fast.predict(liver_slice, boxes=box)
    assert (fast.slices_escalated, fast.runtime.exact_calls, fast.slices_encoded) == (1, 1, 1)
    again = fast.predict(liver_slice, boxes=[5, 5, 60, 60])  # the cached embedding is already the fp32 one
    assert fast.slices_escalated == 1 and fast.runtime.calls == 1
    exact = make_predictor(phantom, model, precision="fp32", escalate=True)  # same fp32 encoder: never escalates
    assert not exact.escalate
    reference = exact.predict(liver_slice, boxes=box)
    assert np.array_equal(first.masks, reference.masks) and np.array_equal(first.iou, reference.iou)
    assert again.masks.shape == (1, 1, 160, 160)
    fast.set_window("abdomen")  # new window: cache and fp32 marks dropped, the slice is encoded fast again
    fast.escalation_error_scale = 0.0
    fast.predict(liver_slice, boxes=box)
    assert (fast.slices_escalated, fast.slices_encoded) == (1, 2)
    off = make_predictor(phantom, model, precision="bf16")  # the default: no escalation
    off.escalation_error_scale = 1e6
    off.predict(liver_slice, boxes=box)
    assert off.slices_escalated == 0 and off.runtime.exact_calls == 0


def test_the_mask_decoder_runs_in_bf16_beside_a_bf16_encoder_and_stays_close_to_fp32(phantom, model, liver_slice):
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    fast = make_predictor(phantom, model, precision="bf16")
    assert fast.decoder_bf16 and not make_predictor(phantom, model, precision="fp32").decoder_bf16
    in_bf16 = fast.predict(liver_slice, boxes=bbox_xyxy(liver))
    fast.decoder_bf16 = False  # the same cached embedding, decoded in fp32
    in_fp32 = fast.predict(liver_slice, boxes=bbox_xyxy(liver))
    assert not np.array_equal(in_bf16.low_res_logits, in_fp32.low_res_logits)  # it did run in bf16
    assert in_bf16.low_res_logits.dtype == np.float32
    assert dice(in_bf16.masks[0, 0], in_fp32.masks[0, 0]) > 0.99 and abs(in_bf16.iou - in_fp32.iou).max() < 0.02


def test_the_compiled_mask_decoder_takes_over_once_ready_and_keeps_the_masks(phantom, model, liver_slice, monkeypatch):
    """Compiled in the background (inductor), warmed up with the prompts a session sends: once ready it answers
    every single-prompt call with the eager decoder's masks, and no call compiles again."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv(ENVIRONMENT_SWITCH, "1")  # the suite keeps decoders eager (conftest); this test compiles
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    box = bbox_xyxy(liver)
    predictor = make_predictor(phantom, model)
    first = predictor.predict(liver_slice, boxes=box)  # eager; starts the compilation
    state = predictor.decoder.wait(600)
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++", "cl")):  # inductor cannot build kernels
        assert state.startswith("failed: ") and predictor.decoder.for_call(1, False, False) is predictor.decoder.eager
        return
    if state.startswith("failed: its masks differ"):  # an inductor build that answers wrongly here is refused
        assert predictor.decoder.for_call(1, False, False) is predictor.decoder.eager
        return
    assert state == "ready", state
    compiled_frames = counters["frames"]["ok"]
    y, x = np.argwhere(liver)[len(np.argwhere(liver)) // 2]
    prompts = [dict(boxes=box), dict(boxes=box, points=[[x, y]], point_labels=[1]),
               dict(boxes=box, points=[[x, y], [box[0], box[1]], [box[2], box[3]]], point_labels=[1, 0, 0],
                    mask_input=first.low_res_logits[0]),
               dict(points=[[x, y]], point_labels=[1], mask_input=first.low_res_logits[0])]
    for kwargs in prompts:
        fast = predictor.predict(liver_slice, **kwargs)
        assert predictor.decoder.for_call(1, False, False) is not predictor.decoder.eager
        predictor.decoder.use_compiled = False  # the eager decoder, same inputs
        plain = predictor.predict(liver_slice, **kwargs)
        predictor.decoder.use_compiled = True
        assert dice(fast.masks[0, 0], plain.masks[0, 0]) > 0.99, list(kwargs)
    assert counters["frames"]["ok"] == compiled_frames  # the warm-up compiled every shape these prompts have
    assert predictor.decoder.for_call(2, False, False) is predictor.decoder.eager  # several prompts stay eager
    assert predictor.decoder.for_call(1, False, True) is predictor.decoder.eager  # and so do escalated slices


def test_the_decoder_runs_autocast_without_its_cache(phantom, model, liver_slice, monkeypatch):
    """The compilation's warm-up decodes in a background thread while the user's decodes run: with autocast's weight
    cache, freeing it under its lock waited for the GIL held by the other thread (a deadlock seen in a benchmark)."""
    import MedFoundationSegLib.segment.predictor as predictor_module

    seen = []
    real = torch.autocast
    monkeypatch.setattr(predictor_module.torch, "autocast", lambda *args, **kwargs: seen.append(kwargs) or real(
        *args, **kwargs))
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    make_predictor(phantom, model, precision="bf16").predict(liver_slice, boxes=bbox_xyxy(liver))
    assert seen and all(kwargs.get("cache_enabled") is False for kwargs in seen)


def test_a_compiled_decoder_whose_masks_differ_from_the_eager_decoders_is_refused(monkeypatch):
    """An inductor build answered NaN on one CPU (Intel Xeon with AMX, torch 2.13) where the eager decoder answered
    the liver: the warm-up's answers are checked against the eager decoder's, and a NaN counts as differing."""
    import MedFoundationSegLib.runtime.compiled_decoder as compiled_decoder

    decoder = torch.nn.Linear(4, 4)

    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(decoder(x), float("nan"))

    monkeypatch.setattr(compiled_decoder.torch, "compile", lambda module, **kwargs: Broken())
    inputs = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    holder = CompiledDecoder(decoder, lambda module: [module(inputs)], enabled=True)
    holder.start()
    assert holder.wait(60) == "failed: its masks differ from the eager decoder's on 100.0% of the pixels"
    assert holder.for_call(1, False, False) is decoder
    monkeypatch.setattr(compiled_decoder.torch, "compile", lambda module, **kwargs: module)  # the same answers
    agreeing = CompiledDecoder(decoder, lambda module: [module(inputs)], enabled=True)
    agreeing.start()
    assert agreeing.wait(60) == "ready"


def test_a_decoder_that_fails_to_compile_stays_eager(monkeypatch):
    import MedFoundationSegLib.runtime.compiled_decoder as compiled_decoder

    monkeypatch.setattr(compiled_decoder.torch, "compile", lambda module, **kwargs: module)  # fails in the warm-up
    decoder = torch.nn.Linear(2, 2)

    def warm_up(compiled):
        raise RuntimeError("no C++ compiler found\nsecond line")

    holder = CompiledDecoder(decoder, warm_up, enabled=True)
    assert holder.for_call(1, False, False) is decoder  # eager while compiling
    assert holder.wait(60) == "failed: no C++ compiler found"
    assert holder.for_call(1, False, False) is decoder
    off = CompiledDecoder(decoder, warm_up, enabled=False)
    assert off.for_call(1, False, False) is decoder and off.wait(1) == "off"


# --- cache ------------------------------------------------------------------------------------------------------
def test_cache_never_reencodes_a_slice(phantom, axial, liver_slice):
    axial.embedding(liver_slice)
    assert axial.is_encoded(liver_slice) and not axial.is_encoded(liver_slice + 1)  # asking encodes nothing
    encoded, calls = axial.slices_encoded, axial.runtime.calls
    for _ in range(3):
        axial.predict(liver_slice, boxes=[10, 10, 60, 60])
        axial.predict(liver_slice, boxes=[[10, 10, 60, 60], [70, 70, 150, 150]], multimask=True)
    assert (axial.slices_encoded, axial.runtime.calls) == (encoded, calls)
    assert axial.cache.hits >= 6


def test_cached_and_uncached_predictions_are_identical(phantom, model, axial, liver_slice):
    liver = phantom.labels.array[liver_slice] == phantom.label_ids["liver"]
    box = bbox_xyxy(liver)
    uncached = make_predictor(phantom, model, cache_bytes=0)
    first = uncached.predict(liver_slice, boxes=box)
    second = uncached.predict(liver_slice, boxes=box)
    assert uncached.slices_encoded == 2 and len(uncached.cache) == 0  # no budget: every call encodes
    cached = axial.predict(liver_slice, boxes=box)
    for other in (second, cached):
        assert np.array_equal(first.masks, other.masks)
        assert np.array_equal(first.iou, other.iou)
        assert np.array_equal(first.low_res_logits, other.low_res_logits)


def test_encode_range_batches_and_respects_the_byte_budget(phantom, model, liver_slice):
    budget = int(2.5 * EMBEDDING_BYTES)  # room for two slices
    predictor = make_predictor(phantom, model, cache_bytes=budget, batch_size=2)
    first, last = liver_slice - 1, liver_slice + 1
    seen = []
    with pytest.warns(RuntimeWarning, match="evicted"):
        newly = predictor.encode_range(first, last, progress=lambda f, m: seen.append(f))
    assert newly == 3 and predictor.slices_encoded == 3
    assert predictor.runtime.calls == 2  # one slice, then the remaining two in one batch
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert len(predictor.cache) == 2 and predictor.cache.nbytes <= budget
    assert predictor.cache.keys() == [liver_slice, last]  # least recently used (first) went out
    assert predictor.encode_range(liver_slice, last) == 0  # cached: nothing to do
    predictor.embedding(first)  # evicted earlier: encoded again, evicting the LRU entry
    assert predictor.slices_encoded == 4 and predictor.cache.nbytes <= budget
    assert predictor.cache.keys() == [last, first]


def test_encode_slices_batches_scattered_slices_once(phantom, model, liver_slice):
    """Key slices (every k-th) are encoded in full batches, each once, whatever order and repeats they come in."""
    predictor = make_predictor(phantom, model, batch_size=2)
    keys = [liver_slice + 4, liver_slice, liver_slice + 2, liver_slice + 4]
    assert predictor.encode_slices(keys) == 3
    assert predictor.runtime.calls == 2 and predictor.cache.keys() == sorted(set(keys))
    assert predictor.encode_slices(keys) == 0 and predictor.runtime.calls == 2


def test_encode_range_honours_cancel(phantom, model, liver_slice):
    predictor = make_predictor(phantom, model, batch_size=1)
    with pytest.raises(Cancelled):
        predictor.encode_range(liver_slice, liver_slice + 3, cancelled=lambda: predictor.slices_encoded >= 1)
    assert predictor.slices_encoded == 1


def test_embedding_cache_is_lru_and_bounded():
    cache = EmbeddingCache(budget_bytes=3 * 400)
    tensors = {i: torch.zeros(100, dtype=torch.float32) for i in range(5)}  # 400 bytes each
    for i in range(3):
        assert cache.put(i, tensors[i])
    cache.get(0)  # 0 becomes most recent
    cache.put(3, tensors[3])
    assert cache.keys() == [2, 0, 3] and cache.nbytes == 1200 and cache.evictions == 1
    assert not cache.put(9, torch.zeros(1000))  # larger than the whole budget: not stored, nothing evicted
    assert cache.keys() == [2, 0, 3]
    assert EmbeddingCache(0).put(1, tensors[1]) is False
    with pytest.raises(ValueError, match="budget"):
        EmbeddingCache(-1)


# --- axes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis, expected_hw", [("coronal", (16, 160)), ("sagittal", (16, 160))])
def test_coronal_and_sagittal_slices_have_the_right_shape(phantom, model, axis, expected_hw):
    predictor = make_predictor(phantom, model, axis=axis)
    assert predictor.num_slices == 160 and predictor.slice_hw == expected_hw
    index = 80
    kept = {"coronal": 1, "sagittal": 2}[axis]
    assert np.array_equal(predictor.slice_image(index), np.take(phantom.image.array, index, axis=kept))
    # Thick slices (z spacing >> in-plane) are stretched back to their physical aspect in the model frame.
    spacing_x, _, spacing_z = phantom.image.spacing_mm
    rows_mm, cols_mm = 16 * spacing_z, 160 * spacing_x
    h, w = predictor.transform.resized_hw
    assert abs(h / w - rows_mm / cols_mm) < 0.02
    prediction = predictor.predict(index, boxes=[40, 3, 120, 12])
    assert prediction.masks.shape == (1, 1) + expected_hw


# --- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"boxes": [100, 10, 170, 50]}, "outside"),
    ({"boxes": [-5, 10, 50, 50]}, "outside"),
    ({"boxes": [50, 10, 50, 60]}, "empty box"),
    ({"boxes": [60, 70, 50, 80]}, "empty box"),
    ({"boxes": [1, 2, 3]}, r"\(N, 4\)"),
    ({"boxes": [10, np.nan, 50, 50]}, "NaN"),
    ({}, "at least a box or points"),
    ({"points": [[10, 10]]}, "point_labels"),
    ({"points": [[10, 10]], "point_labels": [2]}, "1 \\(foreground\\) or 0"),
    ({"points": [[10, 400]], "point_labels": [1]}, "outside"),
    ({"boxes": [10, 10, 50, 50], "mask_input": np.zeros((64, 64))}, "low-res logits"),
])
def test_bad_prompts_raise_clear_errors(axial, liver_slice, kwargs, message):
    with pytest.raises(PredictorError, match=message):
        axial.predict(liver_slice, **kwargs)


def test_bad_slice_index_and_axis(phantom, model, axial):
    with pytest.raises(PredictorError, match="outside the volume's 16 axial slices"):
        axial.predict(16, boxes=[10, 10, 50, 50])
    with pytest.raises(PredictorError, match="integer"):
        axial.embedding(2.0)
    with pytest.raises(PredictorError, match="unknown axis"):
        make_predictor(phantom, model, axis="oblique")


def test_bad_volumes_raise_clear_errors(model):
    image = np.zeros((4, 32, 32), np.float32)
    image[1, 3, 3] = np.nan
    with pytest.raises(PredictorError, match="NaN"):
        SlicePredictor(image, model, preprocessing="litemedsam", window="soft_tissue")
    with pytest.raises(PredictorError, match="dtype"):
        SlicePredictor(np.zeros((4, 32, 32), bool), model, preprocessing="litemedsam")
    with pytest.raises(PredictorError, match="dtype"):
        SlicePredictor(np.zeros((4, 32, 32), np.complex64), model, preprocessing="litemedsam")
    with pytest.raises(PredictorError, match="3D"):
        SlicePredictor(np.zeros((32, 32), np.int16), model, preprocessing="litemedsam")
    with pytest.raises(PredictorError, match="spacing"):
        SlicePredictor(np.zeros((4, 32, 32), np.int16), model, spacing_mm=(1, 0, 1), preprocessing="litemedsam")
    with pytest.raises(PredictorError, match="preprocessing"):
        SlicePredictor(np.zeros((4, 32, 32), np.int16), model)


def test_unknown_model_and_missing_weights(isolated_cache):
    volume = Volume(np.zeros((2, 32, 32), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(UnknownModelError, match="unknown model 'sam_vit_z'"):
        SlicePredictor(volume, "sam_vit_z")
    with pytest.raises(weights.MissingWeightsError, match="medfoundationseg weights fetch litemedsam"):
        SlicePredictor(volume, "litemedsam")


def test_clip_box_to_slice_for_callers_that_grow_boxes():
    assert clip_box_to_slice([-3, 5, 170, 200], (160, 160)).tolist() == [0, 5, 159, 159]


# --- device policy ----------------------------------------------------------------------------------------------
def test_device_selection():
    if torch.cuda.is_available():
        assert select_device("auto").type == "cuda"
    else:
        assert select_device("auto").type in ("mps", "cpu")
        with pytest.raises(DeviceError, match="no CUDA"):
            select_device("cuda")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        select_device("tpu9")


class _PretendGpu(EncoderRuntime):
    """A runtime that believes it is on a CUDA GPU holding at most ``fits`` images per call (math runs on the CPU)."""

    fits = 0

    def _place(self):
        if self.device.type == "cpu":  # the CPU fallback really moves the encoder
            super()._place()

    def _run(self, images):
        if self.device.type != "cuda":
            return super()._run(images)
        if images.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with torch.inference_mode():
            self.calls += 1
            return self.encoder(images).float()


def test_cuda_out_of_memory_shrinks_batches_then_falls_back_to_cpu():
    encoder = torch.nn.Conv2d(3, 4, 1)
    images = torch.rand(5, 3, 8, 8)
    with torch.inference_mode():
        expected = encoder(images)

    runtime = _PretendGpu(encoder, torch.device("cpu"), "fp32", batch_size=8, fold_bn=False, channels_last=False)
    runtime.device, runtime.fits = torch.device("cuda"), 2
    with pytest.warns(RuntimeWarning) as record:
        out = runtime(images)
    messages = [str(w.message) for w in record]
    assert all("out of memory" in m for m in messages) and [m.split("batches of ")[-1] for m in messages] == ["4", "2"]
    assert runtime.batch_size == 2 and runtime.device.type == "cuda" and torch.allclose(out, expected, atol=1e-5)

    runtime = _PretendGpu(encoder, torch.device("cpu"), "fp32", batch_size=4, fold_bn=False, channels_last=False)
    runtime.device, runtime.fits = torch.device("cuda"), 0  # not even one image fits: CPU fallback, same result
    with pytest.warns(RuntimeWarning) as record:
        out = runtime(images)
    messages = [str(w.message) for w in record]
    assert "batches of 2" in messages[0] and "batches of 1" in messages[1] and "falling back to the CPU" in messages[2]
    assert runtime.device.type == "cpu" and torch.allclose(out, expected, atol=1e-5)


def test_bf16_runtime_keeps_an_fp32_copy_only_when_escalation_needs_it():
    """Without keep_exact the CPU bf16 weights replace the fp32 ones (no second copy in memory) and exact() says
    why it cannot run; with it, both copies exist and exact() computes from the fp32 weights."""
    images = torch.rand(2, 3, 8, 8)
    plain = EncoderRuntime(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.device("cpu"), "bf16")
    assert {p.dtype for p in plain.encoder.parameters()} == {torch.bfloat16}
    with pytest.raises(DeviceError, match="keep_exact"):
        plain.exact(images)
    kept = EncoderRuntime(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.device("cpu"), "bf16",
                          keep_exact=True)
    assert {p.dtype for p in kept.encoder.parameters()} == {torch.float32}
    with torch.inference_mode():  # one image per call, as exact() runs
        reference = torch.cat([kept.encoder(images[i: i + 1].contiguous(memory_format=torch.channels_last))
                               for i in range(len(images))])
    assert torch.equal(kept.exact(images), reference) and kept(images).shape == reference.shape


def test_an_encoder_rounded_to_bf16_in_place_is_not_reused_as_fp32():
    """A module shared by two runtimes: after the in-place bf16 conversion its fp32 weights are gone, so an fp32 or
    escalating runtime on it says so instead of computing with the rounded values; another in-place bf16 runtime,
    which would compute the same thing, is fine."""
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    EncoderRuntime(encoder, torch.device("cpu"), "bf16")
    for precision, keep_exact in (("fp32", False), ("bf16", True)):
        with pytest.raises(DeviceError, match="rounded to bf16 in place"):
            EncoderRuntime(encoder, torch.device("cpu"), precision, keep_exact=keep_exact)
    again = EncoderRuntime(encoder, torch.device("cpu"), "bf16")
    assert {p.dtype for p in again.encoder.parameters()} == {torch.bfloat16}
    untouched = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    EncoderRuntime(untouched, torch.device("cpu"), "bf16", keep_exact=True)  # a copy: the module keeps fp32
    EncoderRuntime(untouched, torch.device("cpu"), "fp32")


def test_cpu_runtime_bands_the_tinyvit_stem_unless_told_not_to():
    encoder = build_model("litemedsam").image_encoder
    EncoderRuntime(encoder, torch.device("cpu"), "fp32", batch_size=2)
    assert encoder.stem_bands == 2 * STEM_BANDS_PER_IMAGE
    EncoderRuntime(encoder, torch.device("cpu"), "fp32", band_stem=False)
    assert encoder.stem_bands == 0
