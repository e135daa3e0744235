"""Propagation logic with stand-in segmenters (no model weights), and interpolation between slices."""

import os
import subprocess
import sys

import numpy as np
import pytest
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment.interpolation import InterpolationError, interpolate_slices
from MedFoundationSegLib.segment.keyslices import auto_step, box_every_kth, box_grid, every_kth
from MedFoundationSegLib.segment.overlaps import resolve_overlaps
from MedFoundationSegLib.segment.propagate import (
    PropagationError,
    StopRules,
    box_guided,
    box_per_slice,
    propagate_from_seeds,
)
from MedFoundationSegLib.segment.reference import reference_litemedsam
from MedFoundationSegLib.segment.repropagate import repropagate_from_edit
from MedFoundationSegLib.segment.slice_boxes import grow_box, intersect_boxes, mask_box_xyxy, walk_prompt_xyxy
from scipy import ndimage


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


class Oracle:
    """Ground truth inside the prompt box, randomly eroded/dilated by one pixel; empty where the organ is absent."""

    def __init__(self, gt, seed=0, iou=0.92):
        self.gt, self.rng, self.iou, self.calls = gt, np.random.default_rng(seed), iou, []

    def segment(self, k, box, points=None, labels=None, mask_prompt=None):
        self.calls.append((k, tuple(box), points))
        x0, y0, x1, y1 = box
        m = np.zeros(self.gt.shape[1:], bool)
        m[y0:y1 + 1, x0:x1 + 1] = self.gt[k, y0:y1 + 1, x0:x1 + 1]
        r = int(self.rng.integers(-1, 2))
        if r > 0:
            m = ndimage.binary_dilation(m)
        elif r < 0 and m.sum() > 40:
            m = ndimage.binary_erosion(m)
        return m, self.iou if m.any() else 0.2


class Blob:
    """Adversarial: always an ellipse filling the box, with high confidence (SAM's "a box means an object")."""

    def __init__(self, shape_hw):
        self.shape, self.calls = shape_hw, []

    def segment(self, k, box, points=None, labels=None, mask_prompt=None):
        self.calls.append(k)
        x0, y0, x1, y1 = box
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 2), max((y1 - y0) / 2, 2)
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 0.55, 0.97


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, (48, 128, 128))


def _range(mask):
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(ks[0]), int(ks[-1])


def test_box_per_slice_covers_every_slice_pads_in_mm_and_honours_slabs():
    gt = np.zeros((20, 64, 64), bool)
    gt[5:15, 20:40, 10:30] = True
    oracle = Oracle(gt)
    slab = (8, 9, (12, 22, 28, 38))
    result = box_per_slice(oracle, gt.shape, ((5, 14), (20, 39), (10, 29)), spacing_mm=(0.5, 0.5, 2.0), pad_mm=2.0,
                           slabs=[slab])
    called = {k: box for k, box, _ in oracle.calls}
    assert sorted(called) == list(range(5, 15)) == result.segmented
    assert called[5] == (10 - 4, 20 - 4, 29 + 4, 39 + 4)  # 2 mm at 0.5 mm/px = 4 px
    assert called[8] == (12 - 4, 22 - 4, 28 + 4, 38 + 4)
    assert dice(result.mask, gt) > 0.9
    with pytest.raises(PropagationError, match="outside"):
        box_per_slice(oracle, gt.shape, ((5, 30), (0, 1), (0, 1)))


class BoxFiller(Oracle):
    """SAM's end-slice failure: when the organ covers under a quarter of the prompt box, the mask fills the box."""

    def segment(self, k, box, points=None, labels=None, mask_prompt=None):
        m, iou = super().segment(k, box, points, labels, mask_prompt)
        x0, y0, x1, y1 = box
        if 0 < m.sum() < 0.25 * (x1 - x0 + 1) * (y1 - y0 + 1):
            m = np.zeros_like(m)
            m[y0 + 2:y1 - 1, x0 + 2:x1 - 1] = True
        return m, iou


def _cone(n=24, size=96):
    """An organ whose cross-section shrinks from the middle slice to a point at both ends."""
    gt = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for k in range(2, n - 2):
        radius = 30 * (1 - abs(k - (n - 1) / 2) / ((n - 1) / 2 - 1)) + 2
        gt[k] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
    return gt


def test_box_guided_has_no_end_slice_shelf_where_box_per_slice_has_one():
    gt = _cone()
    (k0, k1), (j0, j1), (i0, i1) = _range(gt), _range(gt.transpose(1, 0, 2)), _range(gt.transpose(2, 0, 1))
    box = ((k0, k1), (j0, j1), (i0, i1))
    per_slice = box_per_slice(BoxFiller(gt), gt.shape, box, pad_mm=2.0)
    filler = BoxFiller(gt)
    guided = box_guided(filler, gt.shape, box, pad_mm=2.0)

    def end_error(m):
        return int((m[[k0, k0 + 1, k1 - 1, k1]] & ~gt[[k0, k0 + 1, k1 - 1, k1]]).sum())

    assert end_error(per_slice.mask) > 5 * max(end_error(guided.mask), 1)  # the shelf exists without the rule
    assert dice(guided.mask, gt) > dice(per_slice.mask, gt) + 0.05 and dice(guided.mask, gt) > 0.85
    print("end-slice false voxels: box per slice", end_error(per_slice.mask), "box-guided", end_error(guided.mask),
          "Dice", round(dice(per_slice.mask, gt), 3), round(dice(guided.mask, gt), 3), guided.stop_reasons)
    assert guided.seeds == [(k0 + k1) // 2] and guided.segmented == list(range(guided.segmented[0], k1 + 1))[
        :len(guided.segmented)]
    rect = (i0 - 2, j0 - 2, i1 + 2, j1 + 2)
    first_k, first_box, _ = filler.calls[0]
    assert first_k == (k0 + k1) // 2 and first_box == rect  # only the middle slice gets the 3D box's rectangle
    for _, prompt, points in filler.calls[1:]:  # later prompts: previous mask's box, never beyond the rectangle
        assert points is None
        assert rect[0] <= prompt[0] and rect[1] <= prompt[1] and prompt[2] <= rect[2] and prompt[3] <= rect[3]


def test_box_guided_stops_inside_a_loose_box_and_falls_back_without_an_object():
    gt = _cone()
    lo, hi = _range(gt)
    loose = ((max(lo - 4, 0), min(hi + 4, gt.shape[0] - 1)), (10, 85), (10, 85))
    result = box_guided(Oracle(gt), gt.shape, loose, pad_mm=1.0)
    got_lo, got_hi = _range(result.mask)
    assert abs(got_lo - lo) <= 1 and abs(got_hi - hi) <= 1  # the last 13-px slice may fall to the 5 % rule
    assert all("empty or tiny" in r or "shrank" in r for r in result.stop_reasons.values()), result.stop_reasons
    empty = np.zeros_like(gt)
    fallback = box_guided(Oracle(empty), gt.shape, loose, pad_mm=1.0)
    assert fallback.segmented == list(range(loose[0][0], loose[0][1] + 1))
    assert "box on every slice" in fallback.stop_reasons["up"]


def test_box_guided_with_the_image_ends_where_the_answer_is_unlike_the_middle_slice():
    """Above a liver's dome the model fills its prompt with lung. Given the image, the walk ends at the first answer
    whose mean intensity is unlike the middle slice's mask; without it, the walk fills every slice to the box's end."""
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 48) ** 2 + (xx - 48) ** 2 <= 15 ** 2
    gt = np.zeros((24, 96, 96), bool)
    gt[4:16] = disk
    lo, hi = _range(gt)
    image = np.where(gt, 100.0, 40.0) + np.random.default_rng(0).normal(0, 5, gt.shape)
    image[hi + 1:] = -800.0  # lung above the organ's end

    class LungFiller(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            if k <= hi:
                return super().segment(k, box, points, labels, mask_prompt)
            return disk.copy(), 0.9  # the organ's size and place: no other rule can tell

    loose = ((lo, min(hi + 3, gt.shape[0] - 1)), _range(gt.transpose(1, 0, 2)), _range(gt.transpose(2, 0, 1)))
    blind = box_guided(LungFiller(gt), gt.shape, loose, pad_mm=1.0)
    assert _range(blind.mask)[1] == loose[0][1]  # the lung slices are taken
    seeing = box_guided(LungFiller(gt), gt.shape, loose, pad_mm=1.0, image=image)
    assert _range(seeing.mask)[1] == hi, seeing.stop_reasons
    assert seeing.stop_reasons["up"].startswith("intensity"), seeing.stop_reasons
    assert dice(seeing.mask, gt) > dice(blind.mask, gt) + 0.01
    with pytest.raises(PropagationError, match="image shape"):
        box_guided(LungFiller(gt), gt.shape, loose, image=image[:-1])


def test_a_drawn_box_walk_keeps_only_tissue_like_the_structure_where_the_model_answers_with_fat():
    """A thin tube in fat leaves its place on the slices above the middle one; there the model keeps answering with
    that place, now mostly fat. The walk cannot end inside a drawn box's slices, and its last resort kept the answer
    near the previous mask, so every slice above held fat. With the image it keeps only tissue like the middle
    slice's, and never a fat pixel."""
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((9, 64, 64), bool)
    for k in range(9):  # the tube moves right by 1 px per slice above the middle slice
        gt[k] = (yy - 32) ** 2 + (xx - 30 - max(k - 4, 0)) ** 2 <= 5 ** 2
    image = np.where(gt, 40.0, -90.0) + np.random.default_rng(0).normal(0, 3, gt.shape)  # a tube in fat

    class TheOldPlace(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            return gt[min(k, 4)].copy(), 0.95  # above the middle slice: where the tube was, whatever is there now

    drawn = ((0, 8), (27, 37), (25, 35))  # the middle slice's 2D box over the tube's slices
    blind = box_guided(TheOldPlace(gt), gt.shape, drawn, pad_mm=0.0, exact_limits=True)
    seeing = box_guided(TheOldPlace(gt), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image)
    fat = ~gt
    assert (blind.mask[5:] & fat[5:]).sum() > 50  # the old last resort kept the fat
    assert not (seeing.mask & fat).any(), seeing.stop_reasons
    assert all(seeing.mask[k].any() for k in range(9))  # the walk still fills every slice of the drawn box
    assert dice(seeing.mask[5:], gt[5:]) > dice(blind.mask[5:], gt[5:])


def test_a_walk_taught_the_structures_intensity_keeps_out_the_fat_the_middle_answer_holds():
    """The model's answers hold a rim of fat around a thin tube on every slice, the middle one included (nearly half
    of it), so a reference taken from the middle answer finds the fat like the tube and the walk keeps the rim. Taught
    the tube's intensity by an earlier volume (one of three rows: another contrast phase, an unknown one, the tube's),
    the reference is the middle answer's pixels like the tube, and the walk keeps no fat beyond the middle slice.
    Taught only another phase, the walk is as without; a localized box's walk is taught nothing."""
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((9, 64, 64), bool)
    gt[:] = (yy - 32) ** 2 + (xx - 32) ** 2 <= 5 ** 2
    answer = (yy - 32) ** 2 + (xx - 32) ** 2 <= 7 ** 2  # the tube and a rim of fat
    image = np.where(gt, 40.0, -90.0) + np.random.default_rng(0).normal(0, 3, gt.shape)

    class WithARim(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            return answer.copy(), 0.95

    drawn = ((0, 8), (27, 37), (27, 37))
    assert 0.4 < (answer & ~gt[4]).sum() / answer.sum() < 0.5
    blind = box_guided(WithARim(gt), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image)
    taught = box_guided(WithARim(gt), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image,
                        learned_appearance=np.array([[160.0, 20.0], [np.nan, np.nan], [41.0, 4.0]]))
    other_phase = box_guided(WithARim(gt), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image,
                             learned_appearance=np.array([[160.0, 20.0]]))
    beyond = np.arange(9) != 4
    fat = ~gt
    assert (blind.mask[beyond] & fat[beyond]).sum() > 100  # the rim, kept on every slice
    assert not (taught.mask[beyond] & fat[beyond]).any(), taught.stop_reasons
    assert all(taught.mask[k].any() for k in range(9))
    assert dice(taught.mask, gt) > dice(blind.mask, gt) + 0.1
    np.testing.assert_array_equal(other_phase.mask, blind.mask)
    assert taught.appearance.endswith("from its pixels like the structure in an earlier volume"), taught.appearance
    assert blind.appearance.endswith("from the middle slice's answer") and other_phase.appearance == blind.appearance
    assert int(taught.appearance.split()[0]) in range(38, 44)  # the tube's intensity, not the rim's mix
    localized = [box_guided(WithARim(gt), gt.shape, drawn, pad_mm=0.0, image=image, learned_appearance=looks)
                 for looks in (None, np.array([[41.0, 4.0]]))]  # where it was not measured: a localized box
    np.testing.assert_array_equal(localized[0].mask, localized[1].mask)


def test_box_every_kth_asks_key_slices_only_and_interpolates():
    gt = _cone(n=30)
    box = (_range(gt), _range(gt.transpose(1, 0, 2)), _range(gt.transpose(2, 0, 1)))
    oracle = Oracle(gt)
    result = box_every_kth(oracle, gt.shape, box, step=3, pad_mm=2.0)
    grid = box_grid(box[0][0], box[0][1], 3)
    assert grid[0] == box[0][0] and grid[-1] == box[0][1] and all(b - a <= 3 for a, b in zip(grid, grid[1:]))
    asked = sorted({c[0] for c in oracle.calls})
    assert set(asked) <= set(grid) and len(asked) >= len(grid) - 2  # nothing but key slices reaches the model
    assert result.segmented == [k for k in grid if result.segmented[0] <= k <= result.segmented[-1]]
    assert len(result.segmented) >= len(grid) - 3  # only the tiny end slices may fall to the 5 % rule
    assert result.interpolated and dice(result.mask, gt) > 0.85
    with pytest.raises(PropagationError, match="step"):
        box_grid(0, 5, 0)


def test_seed_propagation_finds_both_ends_with_an_oracle(phantom):
    gt = phantom.mask("spleen")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    oracle = Oracle(gt)
    result = propagate_from_seeds(oracle, gt.shape, {k: gt[k]})
    got_lo, got_hi = _range(result.mask)
    assert abs(got_lo - lo) <= 1 and abs(got_hi - hi) <= 1
    assert dice(result.mask, gt) > 0.85
    assert "empty or tiny" in result.stop_reasons["up"] and "empty or tiny" in result.stop_reasons["down"]
    # The prompt is the previous mask's box with a margin, and no point unless asked for.
    k_next, box, points = next(c for c in oracle.calls if c[0] == k + 1)
    prev_box = mask_box_xyxy(gt[k])
    assert box[0] < prev_box[0] and box[2] > prev_box[2]
    assert points is None


def test_seed_propagation_positive_point_lies_inside_the_previous_mask(phantom):
    gt = phantom.mask("spleen")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    oracle = Oracle(gt)
    propagate_from_seeds(oracle, gt.shape, {k: gt[k]}, use_point=True)
    _, _, points = next(c for c in oracle.calls if c[0] == k + 1)
    x, y = points[0]
    assert gt[k, int(y), int(x)]


def test_seed_box_is_segmented_first(phantom):
    gt = phantom.mask("kidney_left")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    result = propagate_from_seeds(Oracle(gt), gt.shape, {k: np.array(mask_box_xyxy(gt[k]))})
    assert dice(result.mask, gt) > 0.8


def test_adversarial_blob_stops_at_localized_range(phantom):
    gt = phantom.mask("liver")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    blob = Blob(gt.shape[1:])
    result = propagate_from_seeds(blob, gt.shape, {k: gt[k]}, limits=(lo, hi), rules=StopRules(range_tolerance_slices=2))
    got_lo, got_hi = _range(result.mask)
    assert got_lo == max(lo - 2, 0) and got_hi == min(hi + 2, gt.shape[0] - 1)
    assert "localized range" in result.stop_reasons["up"] or "volume edge" in result.stop_reasons["up"]


def test_adversarial_blob_without_range_stops_on_appearance(phantom):
    gt = phantom.mask("liver")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    blob = Blob(gt.shape[1:])
    result = propagate_from_seeds(blob, gt.shape, {k: gt[k]}, image=phantom.image.array)
    got_lo, got_hi = _range(result.mask)
    assert lo - 2 <= got_lo and got_hi <= hi + 2, (lo, hi, got_lo, got_hi, result.stop_reasons)  # no overshoot
    assert got_hi - got_lo >= (hi - lo) // 2  # but it did propagate
    assert all("intensity" in r and "unlike the seed" in r for r in result.stop_reasons.values())


def test_low_iou_and_leak_rules_stop_and_explain():
    gt = np.zeros((30, 64, 64), bool)
    gt[:, 20:40, 20:40] = True

    class Fading(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            m, _ = super().segment(k, box)
            return m, 0.9 if k < 20 else 0.3

    result = propagate_from_seeds(Fading(gt), gt.shape, {10: gt[10]})
    assert result.stop_reasons["up"] == "low predicted IoU 0.30 < 0.5 at slice 20"
    assert _range(result.mask)[1] == 19

    class Leaky(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            m = np.zeros(gt.shape[1:], bool)
            m[20:40, 20:40] = True
            if k <= 5:
                m[5:60, 5:60] = True
            return m, 0.95

    result = propagate_from_seeds(Leaky(gt), gt.shape, {10: gt[10]})
    assert "area jumped" in result.stop_reasons["down"] and _range(result.mask)[0] == 6


class Overshoot(Oracle):
    """A cube structure on slices 5..20; beyond slice 20 the model fills the previous mask's box, with less
    confidence (``iou_past_end``) than inside the structure (0.93)."""

    def __init__(self, iou_past_end: float):
        gt = np.zeros((30, 64, 64), bool)
        gt[5:21, 20:44, 20:44] = True
        super().__init__(gt)
        self.iou_past_end = iou_past_end

    def segment(self, k, box, points=None, labels=None, mask_prompt=None):
        m, _ = super().segment(k, box)
        if k > 20:
            x0, y0, x1, y1 = box
            m = np.zeros(self.gt.shape[1:], bool)
            m[y0 + 2:y1 - 1, x0 + 2:x1 - 1] = True
            return m, self.iou_past_end
        return m, 0.93


def test_confidence_drop_past_the_end_stops_box_guided():
    """Past a structure's end the model still answers inside the previous mask's box, but less confidently: with the
    opt-in rule, a slab of the old cross-section at predicted IoU 0.66 (structure's median ~0.93) is not kept."""
    overshoot = Overshoot(0.66)
    gt = overshoot.gt
    result = box_guided(overshoot, gt.shape, ((5, 25), (20, 43), (20, 43)), pad_mm=1.0,
                        rules=StopRules(max_iou_drop=0.2))
    assert _range(result.mask)[1] == 20, result.stop_reasons
    assert result.stop_reasons["up"].startswith("predicted IoU fell to 0.66"), result.stop_reasons
    default = box_guided(Overshoot(0.66), gt.shape, ((5, 25), (20, 43), (20, 43)), pad_mm=1.0)
    assert _range(default.mask)[1] > 20  # the rule is opt-in: by default the slab is kept


def test_edit_repropagates_only_outward(phantom):
    gt = phantom.mask("spleen")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    first = propagate_from_seeds(Oracle(gt, seed=1), gt.shape, {k: gt[k]})
    edit = k + 3
    oracle = Oracle(gt, seed=2)
    second = repropagate_from_edit(oracle, first, edit, gt[edit])
    called = sorted({c[0] for c in oracle.calls})
    assert called and min(called) > edit
    assert np.array_equal(second.mask[:edit], first.mask[:edit])
    assert np.array_equal(second.mask[edit], gt[edit])
    assert edit in second.seeds


def test_two_seeds_fill_the_gap_without_overwriting(phantom):
    gt = phantom.mask("liver")
    lo, hi = _range(gt)
    a, b = lo + 3, hi - 3
    oracle = Oracle(gt)
    result = propagate_from_seeds(oracle, gt.shape, {a: gt[a], b: gt[b]})
    assert np.array_equal(result.mask[a], gt[a]) and np.array_equal(result.mask[b], gt[b])
    assert all(result.mask[k].any() for k in range(a, b + 1))
    calls = [c[0] for c in oracle.calls]
    assert len(calls) == len(set(calls))  # each slice asked once


def test_every_kth_segments_key_slices_and_interpolates(phantom):
    gt = phantom.mask("liver")
    lo, hi = _range(gt)
    k = (lo + hi) // 2
    oracle = Oracle(gt)
    result = every_kth(oracle, gt.shape, {k: gt[k]}, step=3)
    asked = sorted({c[0] for c in oracle.calls})
    assert all((s - k) % 3 == 0 for s in asked)
    assert result.interpolated and set(result.interpolated).isdisjoint(result.segmented)
    assert dice(result.mask, gt) > 0.8
    assert auto_step(60, 1.0) == 8 and auto_step(60, 5.0) == 2 and auto_step(4, 1.0) == 1


def test_reference_mode_matches_the_litemedsam_procedure():
    gt = np.zeros((21, 512, 512), bool)
    gt[4:17, 100:200, 150:260] = True
    oracle = Oracle(gt, iou=0.9)
    result = reference_litemedsam(oracle, gt.shape, (150, 100, 2, 259, 199, 18))
    ks = [c[0] for c in oracle.calls]
    assert ks == list(range(10, 19)) + list(range(9, 1, -1))  # middle, up to z1, then down to z0; no stop rule
    assert oracle.calls[0][1] == (150, 100, 259, 199)
    box_11 = oracle.calls[1][1]
    prev = mask_box_xyxy(result.mask[10])
    assert box_11 == (prev[0] - 6, prev[1] - 6, prev[2] + 6, prev[3] + 6)  # 3 px at 256 = 6 px at 512
    assert result.mask[2:4].sum() == 0 and result.segmented == list(range(2, 19))


def test_overlaps_are_resolved_explicitly():
    a = np.zeros((4, 10, 10), bool)
    b = np.zeros_like(a)
    a[:, 2:6] = True
    b[:, 4:8] = True
    by_order = resolve_overlaps({"a": a, "b": b}, {"a": 1, "b": 2}, policy="order")
    assert (by_order.labels[:, 4:6] == 1).all() and by_order.overlaps == {("a", "b"): 4 * 2 * 10}
    by_score = resolve_overlaps({"a": a, "b": b}, {"a": 1, "b": 2}, policy="score", scores={"a": 0.6, "b": 0.9})
    assert (by_score.labels[:, 4:6] == 2).all() and by_score.overlaps == {("b", "a"): 80}
    with pytest.raises(PropagationError, match="needs a score"):
        resolve_overlaps({"a": a}, {"a": 1}, policy="score")


def test_interpolation_between_annotated_slices(phantom):
    gt = phantom.mask("liver")
    lo, hi = _range(gt)
    keys = list(range(lo, hi + 1, 3)) + [hi]
    out = interpolate_slices(gt, keys)
    assert dice(out, gt) > 0.85
    assert not out[:lo].any() and not out[hi + 1:].any()
    for k in keys:
        assert np.array_equal(out[k], gt[k])
    sparse = np.zeros_like(gt)
    sparse[keys] = gt[keys]
    assert dice(sparse, gt) < 0.6  # interpolation did real work
    # Another axis: annotate every 4th coronal slice.
    js = np.flatnonzero(gt.any(axis=(0, 2)))
    ckeys = list(range(js[0], js[-1] + 1, 4)) + [int(js[-1])]
    assert dice(interpolate_slices(gt, ckeys, axis=1), gt) > 0.8
    with pytest.raises(InterpolationError, match="out of range"):
        interpolate_slices(gt, [1000])


INTERPOLATE_AND_EXIT = """
import numpy as np, torch
from MedFoundationSegLib.segment.interpolation import interpolate_slices
z, y, x = np.mgrid[:30, :64, :64]
for shift in range(3):
    cone = (y - 32) ** 2 + (x - 30 - shift) ** 2 < (5 + 15 * (1 - abs(z - 15) / 15)) ** 2
    assert interpolate_slices(cone, list(range(0, 30, 3))).any()
print("exited cleanly")
"""


def test_interpolation_leaves_the_heap_intact(repo_root):
    """ITK's contour interpolator, run on several threads, corrupted the heap: with torch loaded the process aborted
    at exit (glibc's heap checks catch it at once). The engine process must survive any number of interpolations."""
    env = dict(os.environ, MALLOC_CHECK_="3", PYTHONPATH=str(repo_root / "MedFoundationSeg"))
    run = subprocess.run([sys.executable, "-c", INTERPOLATE_AND_EXIT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "exited cleanly" in run.stdout, run.stderr[-2000:]


def test_regrowth_after_tapering_stops_seed_propagation():
    """An organ tapers towards its end; when a neighbour takes over, the mask grows again inside the box. The
    ``seeds`` preset stops there (the regrowth rule); ``box_guided``'s rules, without it, walk on into the neighbour."""
    gt = np.zeros((30, 64, 64), bool)
    sizes = {10: 12, 11: 12, 12: 11, 13: 9, 14: 6, 15: 4}  # half-widths: a tapering organ ending at slice 15
    for k, r in sizes.items():
        gt[k, 32 - r:32 + r, 32 - r:32 + r] = True

    class Handover:
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            if k in sizes:
                return gt[k].copy(), 0.9
            m = np.zeros(gt.shape[1:], bool)  # past the end: a neighbour, a little bigger each slice
            r = min(5 + (k - 16), 12)  # x1.56 area at slice 16: below the leak ratio 1.8
            m[32 - r:32 + r, 32 - r:32 + r] = True
            return m, 0.9

    result = propagate_from_seeds(Handover(), gt.shape, {10: gt[10]})
    assert _range(result.mask)[1] == 15, result.stop_reasons
    assert result.stop_reasons["up"].startswith("mask grew again"), result.stop_reasons
    loose = propagate_from_seeds(Handover(), gt.shape, {10: gt[10]}, rules=StopRules.preset("box_guided"))
    assert _range(loose.mask)[1] > 15


def test_confidence_drop_stops_seed_propagation_by_default():
    overshoot = Overshoot(0.72)
    gt = overshoot.gt
    result = propagate_from_seeds(overshoot, gt.shape, {12: gt[12]})
    assert _range(result.mask)[1] == 20, result.stop_reasons
    assert result.stop_reasons["up"].startswith("predicted IoU fell to 0.72"), result.stop_reasons


def test_stop_rule_presets_come_from_yaml():
    seeds, guided = StopRules.preset("seeds"), StopRules.preset("box_guided")
    assert seeds.max_iou_drop is not None and seeds.regrowth_below_fraction is not None
    assert guided == StopRules()  # the dataclass defaults are the box_guided preset
    with pytest.raises(PropagationError, match="unknown stop-rule preset 'nope'"):
        StopRules.preset("nope")


def test_a_drawn_box_walk_that_meets_a_darker_neighbour_asks_again_with_an_exclude_click_on_it():
    """Above the middle slice a growing structure lies beside a dark neighbour (a ventricle beside the caudate) and
    the model answers with the neighbour unless a click excludes it. The last resort carried the previous mask over,
    so the structure stayed its middle size; now the walk asks again with an include click on the previous mask's
    like pixels and an exclude click on the answer's unlike ones, and keeps the structure as it grows."""
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((9, 64, 64), bool)
    for k in range(9):
        gt[k] = (yy - 32) ** 2 + (xx - 20) ** 2 <= (4 + max(k - 4, 0)) ** 2
    neighbour = (yy - 32) ** 2 + (xx - 44) ** 2 <= 6 ** 2
    image = np.where(gt, 90.0, np.where(neighbour, 40.0, 140.0)) + np.random.default_rng(0).normal(0, 3, gt.shape)

    class DrawnToTheNeighbour(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            self.calls.append((k, labels))
            excluded = labels is not None and 0 in labels and neighbour[int(points[labels.index(0)][1]),
                                                                          int(points[labels.index(0)][0])]
            return (gt[k].copy() if k <= 4 or excluded else neighbour.copy()), 0.9

    drawn = ((0, 8), (28, 36), (16, 24))
    segmenter = DrawnToTheNeighbour(gt)
    walked = box_guided(segmenter, gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image)
    assert [labels for k, labels in segmenter.calls if k == 5] == [None, None, [1], [1, 0]]
    np.testing.assert_array_equal(walked.mask, gt)
    assert not (walked.mask & neighbour).any()


def test_a_drawn_boxs_middle_slice_answered_by_the_click_model_is_followed_by_the_box_model():
    """On the drawn box's middle slice the box model answers with the dark tissue beside a thin structure (LiteMedSAM
    took the fat beside phantom 107's pancreas) while the click model answers the structure (``MiddleAskedOf``). The
    walk starts from the click model's answer, whose probability is kept, and every other slice is the box model's;
    the appearance rule then refuses the box model's dark answers."""
    from MedFoundationSegLib.segment.propagate import MiddleAskedOf

    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((9, 64, 64), bool)
    gt[:] = (yy - 32) ** 2 + (xx - 28) ** 2 <= 5 ** 2
    fat = ((yy - 32) ** 2 + (xx - 37) ** 2 <= 4 ** 2) & ~gt[0]
    image = np.where(gt, 90.0, np.where(fat, -90.0, 40.0)) + np.random.default_rng(0).normal(0, 3, gt.shape)

    class Model:
        def __init__(self, middle_answer):
            self.middle_answer, self.calls, self.probabilities = middle_answer, [], {}

        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            self.calls.append(k)
            self.probabilities[k] = np.where(gt[k], 0.8, 0.1).astype(np.float32)
            return gt[k].copy(), 0.9

        def segment_fitting_box(self, k, box, tight):
            self.calls.append(("middle", k))
            self.probabilities[k] = np.where(self.middle_answer, 0.95, 0.05).astype(np.float32)
            return self.middle_answer.copy(), 0.9

    drawn = ((0, 8), (27, 37), (23, 41))
    alone = box_guided(Model(fat), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image)
    np.testing.assert_array_equal(alone.mask[4], fat)  # the box model's middle answer, and a walk judged by it
    assert (alone.mask != gt).sum() > gt.sum() / 2
    lite, mobile = Model(fat), Model(gt[4])
    walked = box_guided(MiddleAskedOf(lite, mobile), gt.shape, drawn, pad_mm=0.0, exact_limits=True, image=image)
    np.testing.assert_array_equal(walked.mask, gt)
    assert mobile.calls == [("middle", 4)] and sorted(lite.calls) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert lite.probabilities[4].max() == np.float32(0.95) and lite.probabilities[5].max() == np.float32(0.8)


def test_after_a_last_resort_sliver_the_walk_judges_answers_against_the_last_mask_the_model_gave():
    """On one slice of a drawn box most of the structure looks unlike itself (a partial-volume patch), so the last
    resort keeps a sliver of its like pixels. The next slices' right answers are many times that sliver: judged
    against it they were leaks, and the walk kept slivers to the box's end; judged against the last mask the model
    gave, they are kept."""
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((9, 64, 64), bool)
    gt[:] = (yy - 32) ** 2 + (xx - 32) ** 2 <= 6 ** 2
    image = np.where(gt, 90.0, 140.0) + np.random.default_rng(0).normal(0, 3, gt.shape)
    image[6][gt[6] & (xx < 35)] = 40.0  # only a sliver of slice 6 looks like the structure

    class Steady(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            return gt[k].copy(), 0.9

    walked = box_guided(Steady(gt), gt.shape, ((0, 8), (26, 38), (26, 38)), pad_mm=0.0, exact_limits=True,
                        image=image)
    assert 12 <= walked.mask[6].sum() < 0.5 * gt[6].sum()  # the sliver
    for k in (7, 8):
        np.testing.assert_array_equal(walked.mask[k], gt[k])


def test_exact_limits_ask_again_where_a_stop_rule_fires_and_never_leave_the_range():
    """Inside a z-range known to hold the structure (a drawn box), a leak or a low IoU makes the walk try again,
    and a slice whose answers all fail keeps the part near the previous mask; outside it nothing is segmented."""
    gt = np.zeros((30, 64, 64), bool)
    gt[8:22, 20:40, 20:40] = True

    class Troubled(Oracle):
        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            self.calls.append((k, tuple(box), points))
            m = gt[k].copy()
            if k == 16 and points is None:  # a leak unless the deepest point of the previous mask is given
                m[5:60, 5:60] = True
            if k == 12:  # low confidence and a leak whatever the prompt
                m[5:60, 5:60] = True
                return m, 0.3
            return m, 0.95

    loose = propagate_from_seeds(Troubled(gt), gt.shape, {15: gt[15]}, limits=(8, 21))
    assert "area jumped" in loose.stop_reasons["up"] and "low predicted IoU" in loose.stop_reasons["down"]
    segmenter = Troubled(gt)
    exact = propagate_from_seeds(segmenter, gt.shape, {15: gt[15]}, limits=(8, 21), exact_limits=True)
    assert _range(exact.mask) == (8, 21) and dice(exact.mask, gt) > 0.97
    assert [c[2] is not None for c in segmenter.calls if c[0] == 16] == [False, False, True]  # asked again twice
    assert exact.mask[12].sum() <= gt[12].sum() + 4 * 20 * 2 + 4  # the leak was cut near the previous mask
    held = _with_probabilities(Troubled)(gt)
    propagate_from_seeds(held, gt.shape, {15: gt[15]}, limits=(8, 21), exact_limits=True)
    kept = held.probabilities[12] > 0.5  # the kept mask held moderately; far from it the model's background stands
    assert np.all(held.probabilities[12][kept] == np.float32(0.7)) and held.probabilities[12][~kept].max() <= 0.3
    assert float(held.probabilities[12][0, 0]) == np.float32(0.01)
    assert {"up", "down"} == set(exact.stop_reasons) and all("left the localized range" in reason
                                                              for reason in exact.stop_reasons.values())
    guided = box_guided(Troubled(gt), gt.shape, ((8, 21), (20, 39), (20, 39)), exact_limits=True)
    assert _range(guided.mask) == (8, 21) and dice(guided.mask, gt) > 0.97


def _with_probabilities(segmenter_class):
    """``segmenter_class`` that also keeps, per slice, a probability of its last answer (as PredictorSegmenter
    does): 0.99 inside, 0.01 beyond."""

    class Kept(segmenter_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.probabilities = {}

        def segment(self, k, box, points=None, labels=None, mask_prompt=None):
            m, iou = super().segment(k, box, points, labels, mask_prompt)
            self.probabilities[k] = np.where(m, 0.99, 0.01).astype(np.float32)
            return m, iou

    return Kept


class FittingOracle(Oracle):
    """An Oracle that also offers a mask fitting a tight box, as PredictorSegmenter does; records the tight boxes."""

    def __init__(self, gt):
        super().__init__(gt)
        self.tight = []

    def segment_fitting_box(self, k, box, tight):
        self.tight.append((k, tuple(tight)))
        return self.segment(k, box)


def test_box_guided_asks_the_middle_slice_for_a_mask_fitting_the_drawn_box():
    """A drawn box is tight on its middle slice: that slice alone is asked for the candidate fitting the box, with the
    box itself (not the padded prompt); later slices are prompted as before. A localized box is not."""
    gt = _cone()
    (k0, k1), (j0, j1), (i0, i1) = _range(gt), _range(gt.transpose(1, 0, 2)), _range(gt.transpose(2, 0, 1))
    fitting = FittingOracle(gt)
    guided = box_guided(fitting, gt.shape, ((k0, k1), (j0, j1), (i0, i1)), pad_mm=2.0, exact_limits=True)
    assert fitting.tight == [((k0 + k1) // 2, (i0, j0, i1, j1))]
    assert fitting.calls[0][1] == (i0 - 2, j0 - 2, i1 + 2, j1 + 2) and dice(guided.mask, gt) > 0.85
    estimated = FittingOracle(gt)  # a box that is an estimate (a localized one) is not taken as tight
    box_guided(estimated, gt.shape, ((k0, k1), (j0, j1), (i0, i1)), pad_mm=2.0)
    assert estimated.tight == [] and estimated.calls[0][1] == (i0 - 2, j0 - 2, i1 + 2, j1 + 2)


def test_a_walk_prompt_grows_the_mask_box_by_5_px_or_a_tenth_of_its_larger_side_within_the_slice():
    mask = np.zeros((200, 300), bool)
    mask[50:60, 100:110] = True  # 10 px: the 5 px floor
    assert mask_box_xyxy(mask) == (100, 50, 109, 59)
    assert walk_prompt_xyxy(mask_box_xyxy(mask), mask.shape) == (95, 45, 114, 64)
    mask[50:60, 100:180] = True  # 80 px wide: 8 px
    assert walk_prompt_xyxy(mask_box_xyxy(mask), mask.shape) == (92, 42, 187, 67)
    assert walk_prompt_xyxy((0, 0, 299, 199), mask.shape) == (0, 0, 299, 199)  # never beyond the slice
    assert mask_box_xyxy(np.zeros((4, 4), bool)) is None
    assert grow_box((10, 10, 20, 20), 2.4, (100, 100)) == (8, 8, 22, 22)
    assert intersect_boxes((0, 0, 10, 10), (5, 5, 20, 20)) == (5, 5, 10, 10)
    assert intersect_boxes((0, 0, 10, 10), (10, 0, 20, 20)) is None  # 1 px wide: no prompt
