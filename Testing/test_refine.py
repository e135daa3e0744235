"""Weak-supervision refinement on phantoms: refined masks beat the noisy model masks and obey the user."""


import numpy as np
import pytest
from MedFoundationSegLib.core.progress import Cancelled
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment.click_evidence import slice_reach_mm
from MedFoundationSegLib.segment.graphcut import agree_with_mask, cut_probability_shift
from MedFoundationSegLib.segment.refine import (
    Annotations,
    GraphCutParams,
    RefineError,
    click_influence,
    recut_at_click,
    refine,
    refine_graphcut,
)
from scipy import ndimage


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def simulated_model_probability(gt, neighbour, rng):
    """A SAM-like noisy probability: per-slice erosion/dilation, leaks into a neighbour, faint hallucinated ends."""
    prob = np.zeros(gt.shape, np.float32)
    present = np.flatnonzero(gt.any(axis=(1, 2)))
    for k in range(gt.shape[0]):
        m = gt[k]
        if m.any():
            r = int(rng.integers(-3, 4))
            m = ndimage.binary_dilation(m, iterations=r) if r > 0 else ndimage.binary_erosion(m, iterations=-r) \
                if r < 0 else m
            if rng.uniform() < 0.3:
                m = m | (neighbour[k] & ndimage.binary_dilation(gt[k], iterations=8))
        prob[k] = m
    for k in (present[0] - 1, present[-1] + 1):
        if 0 <= k < gt.shape[0]:
            prob[k] = ndimage.binary_erosion(gt[np.clip(k, present[0], present[-1])], iterations=2)
    prob = ndimage.gaussian_filter(prob, (0, 1.0, 1.0))
    return np.clip(prob * 0.9 + 0.05 + rng.normal(0, 0.05, prob.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(21, (64, 192, 192))


@pytest.mark.parametrize("organ,neighbour", [("spleen", "stomach"), ("kidney_left", "spleen"), ("liver", "gallbladder")])
@pytest.mark.parametrize("method", ["graphcut", "geodesic", "growcut"])
def test_refinement_beats_noisy_input_and_box_clip(phantom, organ, neighbour, method):
    rng = np.random.default_rng(hash(organ) % 1000)
    gt = phantom.mask(organ)
    prob = simulated_model_probability(gt, phantom.mask(neighbour), rng)
    box = phantom.box_kji(organ)
    raw = prob > 0.5
    clipped = np.zeros_like(raw)
    region = tuple(slice(lo, hi + 1) for lo, hi in box)
    clipped[region] = raw[region]
    result = refine(phantom.image.array, prob, Annotations(box_kji=box), method=method,
                    spacing_mm=phantom.image.spacing_mm)
    assert result.mask.shape == gt.shape and result.mask.dtype == bool
    refined = dice(result.mask, gt)
    assert refined > dice(raw, gt) + 0.01, (organ, method, refined, dice(raw, gt))
    assert refined > dice(clipped, gt), (organ, method, refined, dice(clipped, gt))
    assert not result.mask[tuple(slice(None, max(lo - 3, 0)) if a == 0 else slice(None) for a, (lo, _) in
                                 enumerate(box))].any()  # nothing far outside the box


def test_clicks_and_scribbles_are_hard_constraints(phantom):
    gt = phantom.mask("spleen")
    prob = gt.astype(np.float32) * 0.9 + 0.05
    k = int(np.median(np.flatnonzero(gt.any(axis=(1, 2)))))
    inside = np.argwhere(gt[k])[len(np.argwhere(gt[k])) // 2]
    outside = np.argwhere(~gt[k] & ndimage.binary_dilation(gt[k], iterations=6))[0]
    neg_inside = np.argwhere(ndimage.binary_erosion(gt[k], iterations=3))[0]
    bg_scribble = np.zeros_like(gt)
    bg_scribble[k, neg_inside[0], neg_inside[1]] = True
    ann = Annotations(clicks_kji=[[k, *outside], [k, *inside]], click_positive=[True, False],
                      bg_scribble=bg_scribble)
    out = refine_graphcut(phantom.image.array, prob, ann, spacing_mm=phantom.image.spacing_mm).mask
    assert out[k, outside[0], outside[1]]  # positive click outside the organ is foreground
    assert not out[k, inside[0], inside[1]]  # negative click inside is background
    assert not out[k, neg_inside[0], neg_inside[1]]


def test_one_click_corrects_a_missed_region_not_just_a_disk(phantom):
    """The model missed the kidney's lower half on several slices; one positive click there should bring most of it
    back (the click pulls the probability around it), where a hard disk alone changes a few voxels."""
    gt = phantom.mask("kidney_left")
    ks = np.flatnonzero(gt.any(axis=(1, 2)))
    k = int(ks[len(ks) // 2])
    rows = np.argwhere(gt)[:, 1]
    cut = int(np.median(rows))
    prob = gt.astype(np.float32) * 0.9 + 0.05
    prob[k - 1:k + 2, cut:, :] = 0.05  # confidently missed there
    missing = gt.copy()
    missing[:k - 1] = missing[k + 2:] = False
    missing[:, :cut] = False
    click = np.argwhere(missing[k])[len(np.argwhere(missing[k])) // 2]
    ann = Annotations(clicks_kji=[[k, *click]], click_positive=[True])
    spacing = phantom.image.spacing_mm
    with_influence = refine_graphcut(phantom.image.array, prob, ann, spacing_mm=spacing).mask
    disk_only = refine_graphcut(phantom.image.array, prob, ann, spacing_mm=spacing,
                                params=GraphCutParams(click_influence_mm=0)).mask
    recovered = (with_influence & missing).sum() / missing.sum()
    assert recovered > 0.5, recovered
    assert recovered > 2 * (disk_only & missing).sum() / missing.sum()
    assert dice(with_influence, gt) > dice(disk_only, gt)


def test_click_influence_fades_and_the_nearest_click_wins():
    prob = np.full((1, 1, 41), 0.5, np.float32)
    out = click_influence(prob, np.array([[0, 0, 0], [0, 0, 40]]), np.array([True, False]), (1.0, 1.0, 1.0), 8.0)
    assert out[0, 0, 0] == pytest.approx(1.0) and out[0, 0, 40] == pytest.approx(0.0)
    assert out[0, 0, 5] > out[0, 0, 15] > 0.5 > out[0, 0, 25] > out[0, 0, 35]
    assert np.array_equal(click_influence(prob, np.zeros((0, 3), int), np.zeros(0, bool), (1, 1, 1), 8.0), prob)


def test_an_exclude_click_can_reach_less_far_than_an_include_click():
    prob = np.full((1, 1, 41), 0.5, np.float32)
    clicks, positive = np.array([[0, 0, 0], [0, 0, 40]]), np.array([True, False])
    same = click_influence(prob, clicks, positive, (1.0, 1.0, 1.0), 8.0)
    short = click_influence(prob, clicks, positive, (1.0, 1.0, 1.0), 8.0, exclude_influence_mm=2.0)
    assert np.array_equal(short[0, 0, :21], same[0, 0, :21])  # the include click's side is as it was
    assert short[0, 0, 40] == pytest.approx(0.0) and 0.5 > short[0, 0, 39] > same[0, 0, 39]
    assert short[0, 0, 30] == pytest.approx(0.5, abs=0.01) and same[0, 0, 30] < 0.4  # 10 mm off: only 8 mm pulls
    none = click_influence(prob, clicks, positive, (1.0, 1.0, 1.0), 8.0, exclude_influence_mm=0.0)
    assert np.all(none[0, 0, 21:] == 0.5)


def test_an_exclude_click_confined_to_its_slice_leaves_the_neighbouring_slices_alone():
    prob = np.full((5, 9, 9), 0.9, np.float32)
    clicks, positive = np.array([[2, 4, 4], [0, 4, 4]]), np.array([False, True])
    spacing = (1.0, 1.0, 3.0)  # thick slices
    in_3d = click_influence(prob, clicks, positive, spacing, 8.0)
    flat = click_influence(prob, clicks, positive, spacing, 8.0, exclude_axis=0)
    assert flat[2, 4, 4] == pytest.approx(0.0) and flat[2, 4, 6] < 0.9  # on its slice it pulls ...
    reach_mm = 0.3 * np.sqrt(81 / np.pi)  # ... as far as a fraction of the slice mask's radius
    alone = click_influence(prob[2:3], clicks[:1] * [0, 1, 1], positive[:1], spacing, 8.0,
                            exclude_influence_mm=reach_mm)
    assert np.allclose(flat[2], alone[0]) and flat[2, 4, 6] > in_3d[2, 4, 6]
    assert in_3d[3, 4, 4] < 0.5 and flat[3, 4, 4] >= 0.9  # off its slice it does not pull (the include click may)
    assert flat[1, 4, 4] > 0.9 and np.array_equal(flat[1], in_3d[1])  # the include click still pulls across slices


def test_an_exclude_click_confined_to_its_slice_reaches_less_far_on_a_small_slice_mask():
    k, j, i = np.mgrid[:3, :80, :80]
    radius_px = np.array([30, 0, 4])[k]  # a large slice, an empty one, the small end of the structure
    prob = np.where(((j - 40) ** 2 + (i - 40) ** 2 <= radius_px ** 2) & (k != 1), 0.9, 0.1).astype(np.float32)
    clicks, positive = np.array([[0, 40, 40], [1, 40, 40], [2, 40, 40]]), np.zeros(3, bool)
    spacing = (0.5, 0.5, 5.0)  # mm: a small slice's mask is 2 mm across
    out = click_influence(prob, clicks, positive, spacing, 8.0, exclude_axis=0, exclude_influence_mm=4.0)
    reaches_mm = slice_reach_mm(prob >= 0.5, 0, spacing[::-1], 4.0).ravel()
    assert np.allclose(reaches_mm, [4.0, 4.0, 0.3 * np.sqrt((prob[2] >= 0.5).sum() * 0.25 / np.pi)])
    for index, reach_mm in enumerate(reaches_mm):
        alone = click_influence(prob[index:index + 1], clicks[:1] * [0, 1, 1], positive[:1], spacing, 8.0,
                                exclude_influence_mm=float(reach_mm))
        assert np.allclose(out[index], alone[0])
    assert out[2, 40, 43] > 0.5 > out[0, 40, 43]  # 1.5 mm off the click: the small slice keeps its voxel


def test_positive_click_recuts_locally(phantom):
    gt = phantom.mask("kidney_right")
    ks = np.flatnonzero(gt.any(axis=(1, 2)))
    k = int(ks[len(ks) // 2])
    damaged = gt.copy()
    half = np.argwhere(gt[k])[:, 1].mean()
    damaged[k, :, int(half):] = False  # the lateral half of the kidney is missing on one slice
    missing = gt[k] & ~damaged[k]
    click = np.argwhere(missing)[len(np.argwhere(missing)) // 2]
    result = recut_at_click(phantom.image.array, damaged, (k, *click), True, spacing_mm=phantom.image.spacing_mm)
    assert dice(result.mask[k], gt[k]) > dice(damaged[k], gt[k]) + 0.1
    far = np.ones(gt.shape[0], bool)
    far[max(k - 2, 0):k + 3] = False
    assert np.array_equal(result.mask[far], damaged[far])  # only slices near the click may change


def test_works_on_a_single_2d_slice(phantom):
    gt = phantom.mask("liver")
    k = int(np.argmax(gt.sum(axis=(1, 2))))
    noisy = ndimage.binary_dilation(gt[k], iterations=3).astype(np.float32)
    result = refine_graphcut(phantom.image.array[k], noisy, spacing_mm=phantom.image.spacing_mm)
    assert result.mask.shape == gt[k].shape
    assert dice(result.mask, gt[k]) > dice(noisy > 0.5, gt[k])


def test_ct_sized_case_improves_the_probability_map():
    """512 x 512 x 100 CT (a 256-grid phantom upsampled in-plane); its latency is printed by bench_refine.py."""
    p = make_phantom(4, (100, 256, 256))
    image = np.repeat(np.repeat(p.image.array, 2, 1), 2, 2)
    gt = np.repeat(np.repeat(p.mask("spleen"), 2, 1), 2, 2)
    spacing = (p.image.spacing_mm[0] / 2, p.image.spacing_mm[1] / 2, p.image.spacing_mm[2])
    prob = simulated_model_probability(gt, np.zeros_like(gt), np.random.default_rng(3))
    result = refine_graphcut(image, prob, Annotations(box_kji=tuple(
        (int(a.min()), int(a.max())) for a in np.nonzero(gt))), spacing_mm=spacing)
    assert image.shape == (100, 512, 512)
    assert dice(result.mask, gt) > dice(prob > 0.5, gt)


def test_bad_inputs_and_cancel(phantom):
    image = phantom.image.array
    with pytest.raises(RefineError, match="does not match"):
        refine_graphcut(image, np.zeros(image.shape[1:], np.float32))
    with pytest.raises(RefineError, match="outside the image"):
        refine_graphcut(image, np.zeros(image.shape, np.float32),
                        Annotations(clicks_kji=[[0, 0, 10_000]], click_positive=[True]))
    with pytest.raises(RefineError, match=r"\[0, 1\]"):
        refine_graphcut(image, np.full(image.shape, 2.0, np.float32))
    with pytest.raises(RefineError, match="nothing to refine"):
        refine_graphcut(image, np.zeros(image.shape, np.float32))
    with pytest.raises(RefineError, match="unknown refinement method"):
        refine(image, phantom.mask("liver"), method="magic")
    with pytest.raises(Cancelled):
        refine_graphcut(image, phantom.mask("liver").astype(np.float32), cancelled=lambda: True)


def cautious_probability(shape=(5, 64, 64), radius=14.0, core=9.0):
    """A faint disk (contrast twice the noise) whose 'model' is sure of the core only: 0.9 inside ``core``, 0.35 on
    the ring out to the disk's edge, 0.05 outside, as a model whose masks stop short of the edge gives."""
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    r = np.hypot(yy - shape[1] / 2, xx - shape[2] / 2)
    truth = np.broadcast_to(r <= radius, shape).copy()
    image = np.where(truth, 30.0, 20.0) + np.random.default_rng(0).normal(0, 5.0, shape)
    prob = np.broadcast_to(np.where(r <= core, 0.9, np.where(r <= radius, 0.35, 0.05)), shape).astype(np.float32)
    return image.astype(np.float32), prob, truth


def test_the_registry_shifts_litemedsams_probability_only():
    assert cut_probability_shift("litemedsam") == 0.375
    for model in ("mobilesam", None, "no_such_model"):
        assert cut_probability_shift(model) == 0.0


def test_a_shifted_probability_lets_the_cut_reach_the_edge_a_cautious_model_stops_short_of():
    image, prob, truth = cautious_probability()
    box = ((0, 4), (16, 47), (16, 47))
    as_given = refine_graphcut(image, prob, Annotations(box_kji=box)).mask
    shifted = refine_graphcut(image, prob, Annotations(box_kji=box), params=GraphCutParams(probability_shift=0.375))
    assert dice(as_given, truth) < 0.9 and as_given.sum() < 0.8 * truth.sum()  # it keeps near the sure core
    assert dice(shifted.mask, truth) > 0.97


def test_the_shift_carries_the_mask_to_a_nearby_edge_but_does_not_flood_what_the_model_was_unsure_of():
    """A faint disk in a wide region the model gave a probability of 0.2 (as LiteMedSAM does around a pancreas at CT
    resolution): shifted everywhere, that region crosses 0.5 and the cut takes it all."""
    shape, radius = (5, 96, 96), 10.0
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    r = np.hypot(yy - shape[1] / 2, xx - shape[2] / 2)
    truth = np.broadcast_to(r <= radius, shape).copy()
    image = (np.where(truth, 30.0, 24.0) + np.random.default_rng(0).normal(0, 5.0, shape)).astype(np.float32)
    prob = np.broadcast_to(np.where(r <= 7.0, 0.9, np.where(r <= radius, 0.35, 0.2)), shape).astype(np.float32)
    box = ((0, 4), (4, 91), (4, 91))
    flooded = refine_graphcut(image, prob, Annotations(box_kji=box),
                              params=GraphCutParams(probability_shift=0.375, shift_reach_per_radius=None)).mask
    near = refine_graphcut(image, prob, Annotations(box_kji=box), params=GraphCutParams(probability_shift=0.375)).mask
    assert flooded.sum() > 10 * truth.sum()
    assert dice(near, truth) > 0.95


def test_agree_with_mask_overrides_the_probability_only_where_the_mask_decided_otherwise():
    prob = np.array([0.1, 0.4, 0.6, 0.9], np.float32)
    mask = np.array([False, True, False, True])
    np.testing.assert_allclose(agree_with_mask(prob, mask), [0.1, 0.75, 0.25, 0.9])


def test_a_later_cut_keeps_what_the_shifted_first_cut_decided():
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.results import CaseResult
    from MedFoundationSegLib.workflow.session import Session

    image, prob, truth = cautious_probability()
    volume = Volume(image, (1.0, 1.0, 1.0))
    box_ijk = np.array([[16, 16, 0], [47, 47, 4]])
    first = Session.refine_result(volume, CaseResult(prob > 0.5, prob, {}), method="graphcut",
                                  box_ijk=box_ijk, probability_shift=cut_probability_shift("litemedsam"))
    assert dice(first.mask_kji, truth) > 0.97
    again = Session.refine_result(volume, first, method="graphcut", box_ijk=box_ijk)
    assert dice(again.mask_kji, first.mask_kji) > 0.98
    # The model's own probability would have taken the next cut back to the sure core.
    undone = Session.refine_result(volume, CaseResult(first.mask_kji, prob, {}), method="graphcut", box_ijk=box_ijk)
    assert dice(undone.mask_kji, truth) < 0.9


def test_on_thick_slices_the_cut_after_a_click_keeps_a_small_structure_the_shifted_first_cut_took_whole():
    """A small faint disk on 5 mm slices whose model is unsure (0.52) of its outer ring: the first cut, shifted, takes
    it whole. The cut after a click on thick slices is as smooth as the first, and on the model's own 0.52 it shrinks
    the disk to its sure core; the probability handed on holds at least 0.75 inside the mask."""
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.results import CaseResult
    from MedFoundationSegLib.workflow.session import CLICK_SMOOTHNESS, Session

    shape, radius = (5, 40, 40), 7.0
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    r = np.hypot(yy - 20, xx - 20)
    truth = np.broadcast_to(r <= radius, shape).copy()
    prob = np.broadcast_to(np.where(r <= 4, 0.9, np.where(r <= radius, 0.52, 0.05)), shape).astype(np.float32)
    image = (np.where(truth, 30.0, 20.0) + np.random.default_rng(0).normal(0, 10.0, shape)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 5.0))
    box_ijk = np.array([[13, 13, 0], [27, 27, 4]])
    later = dict(method="graphcut", box_ijk=box_ijk, exact_slices_axis=0, smoothness=CLICK_SMOOTHNESS["thick"])
    for hold, kept in ((True, lambda d: d > 0.97), (False, lambda d: d < 0.7)):
        first = Session.refine_result(volume, CaseResult(prob > 0.5, prob, {}), method="graphcut", box_ijk=box_ijk,
                                      probability_shift=0.375, hold_mask=hold, exact_slices_axis=0)
        assert dice(first.mask_kji, truth) > 0.95
        assert kept(dice(Session.refine_result(volume, first, **later).mask_kji, first.mask_kji))
    np.testing.assert_allclose(agree_with_mask(np.array([0.1, 0.4, 0.6, 0.9], np.float32),
                                               np.array([False, True, True, False]), hold_inside=True),
                               [0.1, 0.75, 0.75, 0.25])


def test_a_cut_without_clicks_never_empties_what_the_model_found():
    """The cut's smoothness takes a structure two voxels high whole; without clicks the model's mask stands instead
    (with a click the user decides, and the cut may empty it)."""
    bar = np.zeros((5, 32, 32), bool)
    bar[1:4, 15:17, 6:26] = True
    image = (100 + np.random.default_rng(1).normal(0, 10, bar.shape)).astype(np.float32)
    prob = np.where(bar, 0.7, 0.2).astype(np.float32)
    box = ((0, 4), (10, 21), (2, 29))
    kept = refine_graphcut(image, prob, Annotations(box_kji=box)).mask
    np.testing.assert_array_equal(kept, bar)
    far_click = Annotations(box_kji=box, clicks_kji=np.array([[2, 11, 3]]), click_positive=np.array([False]))
    assert not refine_graphcut(image, prob, far_click).mask.any()


@pytest.mark.parametrize("method", ["geodesic", "growcut"])
def test_other_refinements_without_clicks_never_empty_what_the_model_found(method):
    """The geodesic cut and GrowCut (nothing deep enough to grow from) keep the model's thin structure too; with an
    exclude click and nothing to grow from, GrowCut says so."""
    bar = np.zeros((5, 32, 32), bool)
    bar[1:4, 15:17, 6:26] = True
    image = (100 + np.random.default_rng(1).normal(0, 10, bar.shape)).astype(np.float32)
    prob = np.where(bar, 0.7, 0.2).astype(np.float32)
    box = ((0, 4), (10, 21), (2, 29))
    np.testing.assert_array_equal(refine(image, prob, Annotations(box_kji=box), method=method).mask, bar)
    if method == "growcut":
        far_click = Annotations(box_kji=box, clicks_kji=np.array([[2, 11, 3]]), click_positive=np.array([False]))
        with pytest.raises(RefineError, match="no include click"):
            refine(image, prob, far_click, method=method)


def test_a_cut_keeps_to_the_slices_of_a_box_whose_range_is_the_structures():
    """A tube the model sees on slices 2-9 and a box over slices 4-7: a localized box lets the cut reach its margin
    (2 slices each way); a drawn box or a correction's box (``exact_slices_axis``) keeps the cut to its slices, grown
    to every slice the shown mask fills (``box_holding_slices_ijk``), so no slice the user sees is taken away."""
    from MedFoundationSegLib.core import geometry
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow.results import CaseResult
    from MedFoundationSegLib.workflow.session import Session

    tube = np.zeros((12, 32, 32), bool)
    tube[2:10, 10:22, 10:22] = True
    image = np.where(tube, 200.0, 100.0) + np.random.default_rng(2).normal(0, 5, tube.shape)
    volume = Volume(image.astype(np.float32), (1.0, 1.0, 3.0))
    shown = CaseResult(tube, np.where(tube, 0.9, 0.1).astype(np.float32), {})
    box_ijk = np.array([[8, 8, 4], [23, 23, 7]])

    def slices(result):
        return np.flatnonzero(result.mask_kji.any(axis=(1, 2))).tolist()

    assert slices(Session.refine_result(volume, shown, method="graphcut", box_ijk=box_ijk)) == list(range(2, 10))
    exact = Session.refine_result(volume, shown, method="graphcut", box_ijk=box_ijk, exact_slices_axis=0)
    assert slices(exact) == [4, 5, 6, 7]
    grown = geometry.box_holding_slices_ijk(box_ijk, tube[:6], "axial")  # the mask fills slices 2-5
    np.testing.assert_array_equal(grown, [[8, 8, 2], [23, 23, 7]])
    assert slices(Session.refine_result(volume, shown, method="graphcut", box_ijk=grown, exact_slices_axis=0)) == \
        list(range(2, 8))
