"""Corrective clicks (segment/clicks.py) with a stand-in model, and Session.correct's refusals."""

from __future__ import annotations

import types

import numpy as np
import pytest
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.segment.clicks import RIM_PX, Click, correct_with_clicks
from MedFoundationSegLib.workflow.results import CaseResult, report_lines
from MedFoundationSegLib.workflow.session import Session

SHAPE = (30, 48, 48)


def cylinder() -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return ((j - 24) ** 2 + (i - 24) ** 2 <= 100) & (k >= 5) & (k <= 20)


class TruthModel:
    """Answers every prompt with the truth inside the box (a perfect model); logs what it was asked."""

    def __init__(self, truth: np.ndarray, shrink_on: set[int] = frozenset()):
        self.truth, self.shrink_on, self.calls = truth, shrink_on, []

    def segment_slice(self, index, box_xyxy, points_xy=None, point_labels=None, mask_prompt=None):
        self.calls.append((index, None if points_xy is None else len(points_xy), mask_prompt is not None))
        x0, y0, x1, y1 = box_xyxy
        assert x1 > x0 and y1 > y0, f"the model refuses the box {box_xyxy}"  # as the real predictor does
        answer = np.zeros(SHAPE[1:], bool)
        answer[y0:y1 + 1, x0:x1 + 1] = self.truth[index, y0:y1 + 1, x0:x1 + 1]
        if index in self.shrink_on:  # a model that answers less than the truth there
            answer[:, :24] = False
        return types.SimpleNamespace(mask=answer, probability=answer.astype(np.float32),
                                     predicted_iou=0.9 if answer.any() else 0.1)


def run(shown, truth, clicks, **kwargs):
    model = TruthModel(truth, kwargs.pop("shrink_on", set()))
    result = correct_with_clicks(model, shown, shown.astype(np.float32), (10, 10, 38, 38), (5, 20), clicks, **kwargs)
    return result, model


def test_a_positive_click_fills_the_miss_and_spreads_until_the_shown_mask_is_right():
    truth = cylinder()
    shown = truth.copy()
    shown[10:15, :, 24:] = False  # the right half missing on slices 10-14
    result, model = run(shown, truth, [Click((12, 24, 30), True)])
    assert np.array_equal(result.mask, truth)
    assert result.changed == [10, 11, 12, 13, 14]
    assert model.calls[0] == (12, 1, True)  # the clicked slice: its click and the shown mask as prompts
    assert "agrees with the old mask at slice 15" in result.stop_reasons["12 up"]
    assert "agrees with the old mask at slice 9" in result.stop_reasons["12 down"]
    assert np.array_equal(shown, np.where(np.arange(SHAPE[0])[:, None, None] < 10, truth, shown))  # input kept


def test_a_negative_click_takes_away_and_never_adds_beyond_the_clicked_slice():
    truth = cylinder()
    shown = truth.copy()
    shown[10:15, 11:16, 11:16] = True  # a false blob on slices 10-14
    shown[16, 30:34, 30:34] = False  # a small miss elsewhere that nobody clicked on
    result, _ = run(shown, truth, [Click((12, 12, 12), False)])
    assert not (result.mask[10:15] & ~truth[10:15]).any()  # the blob is gone on every slice it was on
    assert not (result.mask & ~shown).any()  # a negative click's spread only takes away
    assert np.array_equal(result.mask[16], shown[16])


def test_an_exclude_clicks_walk_takes_the_blob_and_leaves_the_rim_the_first_cut_drew():
    """The shown mask reaches 2 px past the model's edge (a cautious model's first cut, see refinement's probability
    shift) and holds a false blob on slices 10-14: the walk takes the blob away and keeps the rim."""
    from scipy import ndimage
    from skimage.morphology import disk

    truth = cylinder()
    grown = np.stack([ndimage.binary_dilation(plane, disk(RIM_PX)) for plane in truth])
    shown = grown.copy()
    shown[10:15, 6:16, 6:16] = True
    result, _ = run(shown, truth, [Click((12, 9, 9), False)])
    walked = [10, 11, 13, 14]
    assert set(walked) <= set(result.changed)
    assert np.array_equal(result.mask[walked], grown[walked])


def test_a_walk_re_prompts_at_most_the_spread_limit_of_slices_each_way():
    truth = cylinder()
    shown = truth.copy()
    shown[5:21, :, 24:] = False  # the right half missing on every slice of the structure
    result, model = run(shown, truth, [Click((12, 24, 30), True)], max_spread_slices=3)
    assert result.changed == list(range(9, 16))  # the clicked slice and 3 each way, no further
    assert sorted(call[0] for call in model.calls) == list(range(9, 16))
    assert "end of its walk at slice 15" in result.stop_reasons["12 up"]
    assert np.array_equal(result.mask[16:], shown[16:]) and np.array_equal(result.mask[:9], shown[:9])
    result, _ = run(shown, truth, [Click((12, 24, 30), True)])  # by default a click walks further
    assert np.array_equal(result.mask, truth)


def test_a_positive_clicks_spread_only_adds():
    truth = cylinder()
    shown = truth.copy()
    shown[10:15, :, 24:] = False
    result, _ = run(shown, truth, [Click((12, 24, 30), True)], shrink_on={11, 13})
    beyond = [k for k in range(SHAPE[0]) if k != 12]
    assert not (shown[beyond] & ~result.mask[beyond]).any()


def test_a_slice_corrected_to_empty_clears_the_overshoot_beyond_it():
    truth = cylinder()
    shown = truth.copy()
    shown[21:25] = shown[20]  # the mask runs 4 slices past the structure's end
    result, _ = run(shown, truth, [Click((21, 24, 24), False)])
    assert not result.mask[21:].any()
    assert np.array_equal(result.mask[:21], truth[:21])


def test_a_walk_follows_a_thin_mask_outside_the_structures_box():
    """A one-pixel-wide mask beside the box (drawn there by hand): the walk prompts with its box plus the margin,
    never with a box the model refuses."""
    shown = np.zeros(SHAPE, bool)
    shown[5:21, 20:31, 44] = True  # a line in column 44; the structure's box ends at column 38
    shown[12] |= cylinder()[12]  # and the structure on the clicked slice
    truth = shown.copy()
    truth[10:15, :, 44] = False  # the line is wrong on slices 10-14
    result, _ = run(shown, truth, [Click((12, 25, 44), False)])
    assert np.array_equal(result.mask, truth)
    assert result.changed == [10, 11, 12, 13, 14]


def test_session_correct_refuses_no_clicks_and_clicks_outside():
    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    shown = CaseResult(cylinder(), cylinder().astype(np.float32), {})
    box = [[10, 10, 5], [38, 38, 20]]
    with pytest.raises(ValueError, match="no clicks"):
        Session().correct(volume, shown, box, [])
    with pytest.raises(ValueError, match=r"click \(40, 3, 3\) .* lies outside the volume"):
        Session().correct(volume, shown, box, [((40, 3, 3), True)])


def test_the_reach_of_a_click_in_the_refinement_is_an_option():
    volume = Volume(np.full(SHAPE, 100.0, np.float32), (1.0, 1.0, 1.0))
    shown = cylinder()
    outside = np.array([[40, 24, 12]])  # (i, j, k): beyond the cylinder's edge at column 34, on a flat image
    grown = {reach: Session().refine(volume, shown, positive_ijk=outside, reprompt_clicks=False, click_reach_mm=reach
                                     ).mask_kji for reach in (0.0, 8.0, 20.0)}
    assert grown[0.0].sum() <= grown[8.0].sum() < grown[20.0].sum()  # the farther it reaches, the more it pulls in
    gap = (12, 24, slice(34, 38))  # between the cylinder and the click's own disk
    assert not grown[0.0][gap].any() and grown[20.0][gap].all()
    with pytest.raises(ValueError, match="click_reach_mm"):
        Session().refine(volume, shown, positive_ijk=outside, click_reach_mm=-1.0)


def test_exclude_clicks_pull_on_their_own_slice_only_where_slices_are_thick():
    from MedFoundationSegLib.core.geometry import thick_slice_axis

    ct = (0.8, 0.8, 5.0)  # (x, y, z) mm
    assert thick_slice_axis(ct, "axial") == 0
    assert thick_slice_axis(ct, "coronal") is None  # a coronal slice is 0.8 mm thick, its pixels 0.8 x 5 mm
    assert thick_slice_axis((1.0, 1.0, 1.0), "axial") is None and thick_slice_axis((1.0, 1.0, 1.5), "axial") is None


def test_the_box_a_segment_is_corrected_in_holds_its_include_clicks():
    from MedFoundationSegLib.workflow.fusion import segment_box_ijk

    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 20:30, 5:15] = True
    box = segment_box_ijk(volume, mask, [((25, 40, 14), True), ((2, 2, 2), False)])
    # kji 10..25 x 20..40 x 5..14 (the include click grows it, the exclude click does not), 3 voxels more each way
    assert box.tolist() == [[2, 17, 7], [17, 43, 28]]
    edge = np.zeros(SHAPE, bool)
    edge[0:2, 0:4, 44:48] = True
    assert segment_box_ijk(volume, edge, []).tolist() == [[41, 0, 0], [47, 6, 4]]  # clipped to the volume
    # no margin along the model's slice axis: the segment's own slices and its include clicks' (kji 10..25)
    assert segment_box_ijk(volume, mask, [((25, 40, 14), True)], slice_axis=0).tolist() == [[2, 17, 10], [17, 43, 25]]


def test_an_include_click_outside_the_box_grows_the_box_past_it_and_no_other_click_does():
    from MedFoundationSegLib.core.geometry import box_holding_clicks_ijk

    box = np.array([[10, 10, 5], [29, 19, 20]])  # (i, j, k)
    assert box_holding_clicks_ijk(box, [[12, 12, 6]], "axial", SHAPE).tolist() == box.tolist()  # inside: as it was
    grown = box_holding_clicks_ijk(box, [[35, 25, 22]], "axial", SHAPE)
    assert grown.tolist() == [[10, 10, 5], [41, 31, 22]]  # 6 beyond the edge: 6 more in the slice; to its slice
    assert box_holding_clicks_ijk(box, [[30, 15, 6]], "axial", SHAPE).tolist() == [[10, 10, 5], [33, 19, 20]]
    assert box_holding_clicks_ijk(box, [[2, 2, 2]], "axial", SHAPE).tolist() == [[0, 0, 2], [29, 19, 20]]


def test_session_correct_reaches_a_structure_beyond_the_box_where_the_user_clicks():
    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    truth = cylinder()
    box = [[14, 14, 5], [26, 34, 20]]  # (i, j, k): the cylinder's columns 14..34 cut at 26
    shown = np.zeros(SHAPE, bool)
    shown[5:21, 14:35, 14:27] = truth[5:21, 14:35, 14:27]
    session = Session()
    model = TruthModel(truth)
    session.segmenter = lambda volume, options=None, **changes: model
    result = session.correct(volume, CaseResult(shown, shown.astype(np.float32), {}), box,
                             [((12, 24, 31), True)], refine="none", learn=False)
    assert result.report["correction"]["box_ijk"] == [[14, 14, 5], [36, 34, 20]]  # 5 beyond the edge, 5 more
    assert result.mask_kji[12, 24, 27:35].all()  # the clicked slice now holds the cylinder beyond the box
    assert result.mask_kji[8:18, 24, 30].all()  # and the correction spread to its neighbours


def test_a_correction_walks_to_its_neighbours_on_thin_slices_only():
    truth = cylinder()
    shown = truth.copy()
    shown[8:17, :, 24:] = False  # the right half missing on slices 8-16
    reached = {}
    for spacing in ((1.0, 1.0, 1.0), (1.0, 1.0, 5.0)):  # thin, then thick slices (x, y, z mm)
        session = Session()
        model = TruthModel(truth)
        session.segmenter = lambda volume, options=None, **changes: model
        result = session.correct(Volume(np.zeros(SHAPE, np.float32), spacing), CaseResult(shown, shown.astype(
            np.float32), {}), [[10, 10, 5], [38, 38, 20]], [((12, 24, 30), True)], refine="none", learn=False)
        reached[spacing[2]] = result.report["correction"]["changed"]
    assert reached[1.0] == list(range(8, 17))  # the walk re-prompted the neighbours until they agreed
    assert reached[5.0] == [12]  # on 5 mm slices only the clicked slice is asked again


def test_an_exclude_click_pulls_at_most_a_fraction_of_the_structures_radius_far():
    from MedFoundationSegLib.core.geometry import equivalent_radius_mm

    ball = np.zeros((40, 40, 40), bool)
    k, j, i = np.mgrid[:40, :40, :40]
    ball[(k - 20) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= 100] = True
    assert equivalent_radius_mm(ball, (1.0, 1.0, 1.0)) == pytest.approx(10.0, rel=0.02)
    assert equivalent_radius_mm(ball, (2.0, 2.0, 2.0)) == pytest.approx(20.0, rel=0.02)

    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    asked = []
    session = Session()
    session.segmenter = lambda volume, options=None, **changes: TruthModel(cylinder())
    session.refine_result = lambda volume, result, **kwargs: asked.append(kwargs) or result
    shown = CaseResult(cylinder(), cylinder().astype(np.float32), {})
    box = [[10, 10, 5], [38, 38, 20]]
    session.correct(volume, shown, box, [((12, 24, 24), False)], refine="graphcut", learn=False)
    radius = equivalent_radius_mm(cylinder(), (1.0, 1.0, 1.0))  # about 8.8 mm: 16 slices of a 10-voxel disk
    assert asked[-1]["click_reach_mm"] == 8.0 and asked[-1]["exclude_reach_mm"] == pytest.approx(radius / 2)
    assert asked[-1]["smoothness"] == 2.0  # thin slices: a smoother cut would shrink what the clicks corrected
    session.correct(volume, shown, box, [((12, 24, 24), False)], refine="graphcut", learn=False, click_reach_mm=3.0)
    assert asked[-1]["click_reach_mm"] == asked[-1]["exclude_reach_mm"] == 3.0  # a reach the user set holds for both
    thick = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 5.0))  # there an exclude click pulls on its slice only
    session.correct(thick, shown, box, [((12, 24, 24), False)], refine="graphcut", learn=False)
    thick_radius = equivalent_radius_mm(cylinder(), (1.0, 1.0, 5.0))  # about 18 mm
    assert asked[-1]["click_reach_mm"] == 14.0 and asked[-1]["exclude_pull_axis"] == 0
    # an exclude click near a thick-slice organ's end emptied its small cross-sections at 14 mm
    assert asked[-1]["exclude_reach_mm"] == pytest.approx(0.3 * thick_radius) and 0.3 * thick_radius < 14.0
    assert asked[-1]["smoothness"] == 5.0


def test_an_exclude_click_on_a_segment_of_a_model_that_over_reaches_pulls_farther_on_thin_slices():
    """MobileSAM's masks reach past MR structures; on thin slices its exclude clicks pull as far as 0.6 of the mask's
    radius up to the registry's 20 mm, where another model's reach half the radius up to an include click's 8 mm.
    Thick slices keep their own rule."""
    from MedFoundationSegLib.core.geometry import equivalent_radius_mm

    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    ball = (k - 15) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 14 ** 2
    radius = equivalent_radius_mm(ball, (1.5, 1.5, 1.5))
    assert 8.0 < radius / 2 and 0.6 * radius < 20.0
    asked = []
    session = Session()
    session.segmenter = lambda volume, options=None, **changes: TruthModel(ball)
    session.refine_result = lambda volume, result, **kwargs: asked.append(kwargs) or result
    box = [[10, 10, 1], [38, 38, 29]]
    for model, slice_mm, expected in (("mobilesam", 1.5, 0.6 * radius), ("litemedsam", 1.5, 8.0),
                                      ("mobilesam", 7.5, 0.3 * equivalent_radius_mm(ball, (1.5, 1.5, 7.5)))):
        volume = Volume(np.zeros(SHAPE, np.float32), (1.5, 1.5, slice_mm))
        shown = CaseResult(ball, ball.astype(np.float32), {"model": model})
        session.correct(volume, shown, box, [((15, 24, 36), False)], model=model, refine="graphcut", learn=False)
        assert asked[-1]["exclude_reach_mm"] == pytest.approx(expected, rel=1e-6), (model, slice_mm)


def test_the_first_cut_of_a_segmentation_holds_its_mask_for_the_cuts_after_clicks_on_thick_slices_only():
    """The cut after a click on thick slices is as smooth as the first cut, so the probability handed on holds the
    first cut's mask there (segment/graphcut.py, ``agree_with_mask``); on thin slices the later cut is less smooth."""
    ball = np.zeros(SHAPE, bool)
    ball[10:20, 16:32, 16:32] = True
    asked = []
    session = Session()
    session._segment_along = lambda volume, box_ijk, o, *rest: CaseResult(ball, ball.astype(np.float32),
                                                                         {"model": o.model})
    session.refine_result = lambda volume, result, **kwargs: asked.append(kwargs) or result
    for model, slice_mm, held in (("litemedsam", 5.0, True), ("litemedsam", 1.5, False)):
        volume = Volume(np.zeros(SHAPE, np.float32), (1.5, 1.5, slice_mm))
        session.segment_box(volume, [[10, 10, 5], [38, 38, 25]], model=model, refine="graphcut", learn=False)
        assert asked[-1]["hold_mask"] is held and asked[-1]["probability_shift"] > 0, (model, slice_mm)


def test_a_smoother_cut_shrinks_a_small_structure_the_model_is_unsure_of():
    """Why the cut after a correction is less smooth on thin slices: with the model at 0.75 / 0.25, the default
    smoothness cuts a 6 mm ball down to a fraction, the thin-slice one keeps nearly all of it."""
    from MedFoundationSegLib.segment.graphcut import Annotations, GraphCutParams
    from MedFoundationSegLib.segment.refine import refine
    from MedFoundationSegLib.workflow.session import CLICK_SMOOTHNESS

    k, j, i = np.mgrid[:24, :40, :40]
    ball = (k - 12) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= 36
    image = (100 + 10 * ball + np.random.default_rng(0).normal(0, 10, ball.shape)).astype(np.float32)
    probability = np.where(ball, 0.75, 0.25).astype(np.float32)
    kept = {}
    for where, smoothness in CLICK_SMOOTHNESS.items():
        mask = refine(image, probability, Annotations(box_kji=((4, 20), (12, 28), (12, 28))), method="graphcut",
                      spacing_mm=(1.0, 1.0, 1.0), params=GraphCutParams(smoothness=smoothness)).mask
        kept[where] = (mask & ball).sum() / ball.sum()
    assert kept["thick"] < 0.5 < 0.9 < kept["thin"]


def test_refine_asks_the_model_again_only_for_the_clicks_the_segment_contradicts():
    """The panel sends every click of its point lists, those of earlier refinements too: the segment already obeys
    those, so only the new click's slice is re-prompted (each Refine costs one click's work, not all of them)."""
    truth = cylinder()
    shown = truth.copy()
    shown[12, :, 24:] = False  # the right half missing on slice 12
    session = Session()
    model = TruthModel(truth)
    session.segmenter = lambda volume, options=None, **changes: model
    session.refine_result = lambda volume, result, **kwargs: result
    thick = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 5.0))  # no walk: only re-prompted slices are asked
    earlier, new = [24, 24, 8], [30, 24, 12]  # (i, j, k): inside the segment on slice 8; where it misses on slice 12
    result = session.refine(thick, shown, positive_ijk=np.array([earlier, new], float), learn=False)
    assert [call[0] for call in model.calls] == [12]
    assert np.array_equal(result.mask_kji[12], truth[12])
    model.calls.clear()
    session.refine(thick, result.mask_kji, positive_ijk=np.array([earlier, new], float), learn=False)
    assert len(model.calls) == 1  # nothing contradicted: one slice is asked, not every clicked one


def test_refine_corrects_in_the_box_and_from_the_probability_the_evidence_holds():
    """With the engine's evidence behind the segment, the correction keeps to the stored box (not the mask's own box)
    and starts from the stored probability; the segment tag's report says which evidence a Refine had."""
    from MedFoundationSegLib.workflow.evidence import Evidence

    truth = cylinder()
    shown = truth.copy()
    shown[12, :, 24:] = False
    session = Session()
    session.segmenter = lambda volume, options=None, **changes: TruthModel(truth)
    given = []
    session.refine_result = lambda volume, result, **kwargs: given.append((result, kwargs)) or result
    thick = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 5.0))
    probability = np.where(shown, 0.97, 0.02).astype(np.float32)
    stored_box = np.array([[12, 12, 5], [36, 36, 20]])
    result = session.refine(thick, shown, positive_ijk=np.array([[30, 24, 12]], float), learn=False,
                            evidence=Evidence(probability, stored_box))
    outcome, kwargs = given[-1]
    assert np.array_equal(kwargs["box_ijk"], stored_box)
    untouched = np.ones(SHAPE, bool)
    untouched[12] = False  # the re-prompted slice holds the model's new answer
    assert np.array_equal(outcome.probability_kji[untouched], probability[untouched])
    assert result.report_summary()["evidence"] == "model probability"
    bare = session.refine(thick, shown, positive_ijk=np.array([[30, 24, 12]], float), learn=False)
    assert not np.array_equal(given[-1][1]["box_ijk"], stored_box)  # the mask's own box, with a margin
    assert bare.report_summary()["evidence"] == "bare mask"


def test_a_model_that_reads_points_asks_the_clicked_slice_and_the_segmenting_model_walks():
    """``click_segmenter`` answers the clicked slice (with its click); the walk to the neighbours prompts the
    segmenting model with boxes."""
    truth = cylinder()
    shown = truth.copy()
    shown[10:15, :, 24:] = False
    walker, clicked = TruthModel(truth), TruthModel(truth)
    result = correct_with_clicks(walker, shown, shown.astype(np.float32), (10, 10, 38, 38), (5, 20),
                                 [Click((12, 24, 30), True)], click_segmenter=clicked)
    assert np.array_equal(result.mask, truth)
    assert clicked.calls == [(12, 1, True)]
    assert sorted(call[0] for call in walker.calls) == [9, 10, 11, 13, 14, 15] and \
        all(points is None for _, points, _ in walker.calls)


def test_the_click_model_is_the_registrys_when_its_weights_are_cached(monkeypatch):
    """With "auto", LiteMedSAM (trained with boxes only) hands clicked slices to MobileSAM when its weights are cached,
    and says so when they are not; "auto" is the default; a model without a click model, an explicit name and "" are
    taken as they are."""
    from pathlib import Path

    from MedFoundationSegLib.core import weights
    from MedFoundationSegLib.workflow.box_modes import click_model_route
    from MedFoundationSegLib.workflow.options import Options

    status = {"mobilesam": "ok"}
    monkeypatch.setattr(weights, "cached_status", lambda name, **_: (Path(name), status.get(name, "missing")))
    assert click_model_route(Options(model="litemedsam", click_model="auto")) == ("mobilesam", None)
    assert click_model_route(Options(model="mobilesam", click_model="auto")) == ("mobilesam", None)
    assert click_model_route(Options(model="litemedsam")) == ("mobilesam", None)  # the default is "auto"
    assert click_model_route(Options(model="litemedsam", click_model="")) == ("litemedsam", None)
    assert click_model_route(Options(model="mobilesam", click_model="litemedsam")) == ("litemedsam", None)
    status.clear()
    model, note = click_model_route(Options(model="litemedsam", click_model="auto"))
    assert model == "litemedsam" and "mobilesam weights are not cached" in note


def test_a_segmentation_readies_the_click_model_in_idle_time_so_neither_the_answer_nor_a_click_waits(monkeypatch):
    """After the panel's segmentation the click model's loading and its encoding of the box's slices (the middle one
    first) wait as idle work, so the segmentation's answer is not held back; nothing is queued where clicks go to the
    segmenting model (``click_model: ""``, a Session keeping one predictor, fused models)."""
    from pathlib import Path

    from MedFoundationSegLib.core import weights
    from MedFoundationSegLib.workflow.options import Options

    monkeypatch.setattr(weights, "cached_status", lambda name, **_: (Path(name), "ok"))
    encoded = []

    class Predictor:
        model_name = "fake"

        def __init__(self, model):
            self.model = model

        def embedding(self, index):
            encoded.append((self.model, index))

        class cache:  # room for 6 slices
            budget_bytes = 12

            @staticmethod
            def size_of(embedding):
                return 2

        def encode_slices(self, indices, cancelled=None):
            encoded.append((self.model, sorted(indices)))
            return len(indices)

    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    box_ijk = [[10, 10, 4], [30, 30, 13]]
    for session, options, model in ((Session(), Options(model="litemedsam", click_model="auto"), "mobilesam"),
                                    (Session(), Options(model="litemedsam", click_model=""), None),
                                    (Session(max_predictors=1), Options(model="litemedsam", click_model="auto"), None),
                                    (Session(), Options(model="litemedsam", click_model="auto", fusion="models"), None)):
        held = {}  # the Session holds its predictors
        session.predictor = lambda volume, options=None, **changes: held.setdefault(options.model,
                                                                                    Predictor(options.model))
        encoded.clear()
        assert session.ready_click_model(volume, box_ijk, options) == model
        assert encoded == [] and held == {}  # nothing loaded nor encoded before the answer goes back
        task = session.idle_work.next()  # loading and encoding, in the engine's idle time
        assert (task is not None) == bool(model)
        if task:
            task(lambda: False)
            assert list(held) == [model]
            assert encoded == [(model, 8), (model, [5, 6, 7, 8, 9, 10])]  # the middle slice, then the 6 nearest it


def test_a_drawn_boxs_middle_slice_is_asked_of_the_model_that_answers_the_users_clicks(monkeypatch):
    """A drawn box's middle slice, where the box is the structure's own, is answered by the click model
    (``Options.click_model``: MobileSAM for LiteMedSAM, whose answers there held fat beside the pancreas). A localized
    box (no middle slice fitting it), a model that is its own click model, ``click_model: ""`` or a box-per-slice mode
    keep one model."""
    from pathlib import Path

    from MedFoundationSegLib.core import weights
    from MedFoundationSegLib.workflow import session as session_module
    from MedFoundationSegLib.workflow.options import Options

    monkeypatch.setattr(weights, "cached_status", lambda name, **_: (Path(name), "ok"))
    seen = []

    class Walked(Exception):
        pass

    def run_box_mode(volume, segmenter, box, o, padding_mm, slabs, progress, cancelled, learned=None,
                     click_segmenter=None):
        seen.append((segmenter.model, click_segmenter and click_segmenter.model))
        raise Walked

    monkeypatch.setattr(session_module, "run_box_mode", run_box_mode)
    session = Session()
    session.segmenter = lambda volume, options=None, **changes: types.SimpleNamespace(model=options.model)
    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    for changes, routed in ((dict(exact_range=True), ("litemedsam", "mobilesam")),
                            (dict(exact_range=False), ("litemedsam", None)),
                            (dict(exact_range=True, click_model=""), ("litemedsam", None)),
                            (dict(exact_range=True, model="mobilesam"), ("mobilesam", None)),
                            (dict(exact_range=True, mode="box"), ("litemedsam", None))):
        with pytest.raises(Walked):
            session.segment_box(volume, [[10, 10, 4], [30, 30, 13]],
                                Options(**{"model": "litemedsam", "click_model": "auto", **changes}))
        assert seen.pop() == routed, changes


def test_downloading_a_models_weights_downloads_the_model_that_answers_its_clicks_too(monkeypatch):
    """The panel's "Download weights" of LiteMedSAM also fetches MobileSAM (its registry click model), so the default
    "auto" takes effect; a model that reads points itself fetches only its own."""
    from MedFoundationSegLib.core import weights
    from MedFoundationSegLib.workflow.actions import EngineRequest, run_request

    fetched = []
    monkeypatch.setattr(weights, "fetch_job", lambda name, **_: fetched.append(name) or f"/cache/{name}.pt")
    meta = run_request(Session(), EngineRequest("fetch_weights", params={"name": "litemedsam"})).meta
    assert fetched == ["litemedsam", "mobilesam"]
    assert meta == {"path": "/cache/litemedsam.pt", "click_model_path": "/cache/mobilesam.pt"}
    fetched.clear()
    assert run_request(Session(), EngineRequest("fetch_weights", params={"name": "mobilesam"})).meta == \
        {"path": "/cache/mobilesam.pt"}
    assert fetched == ["mobilesam"]


class JumpingModel(TruthModel):
    """The truth everywhere but on ``jump_on``, where it answers another object: a disk in the box's corner."""

    def __init__(self, truth: np.ndarray, jump_on: int, radius: int = 6, centre=(12, 36)):
        super().__init__(truth)
        self.jump_on, self.radius, self.centre = jump_on, radius, centre

    def segment_slice(self, index, box_xyxy, points_xy=None, point_labels=None, mask_prompt=None):
        result = super().segment_slice(index, box_xyxy, points_xy, point_labels, mask_prompt)
        if index == self.jump_on:
            j, i = np.mgrid[:SHAPE[1], :SHAPE[2]]
            result.mask = (j - self.centre[0]) ** 2 + (i - self.centre[1]) ** 2 <= self.radius ** 2
            result.probability = result.mask.astype(np.float32)
        return result


def test_an_answer_that_leaves_the_structure_keeps_the_shown_mask_and_spreads_nothing():
    truth = cylinder()
    shown = truth.copy()
    shown[12, 30:36, 20:28] = True  # a bulge below the structure on slice 12
    exclude = [Click((12, 33, 24), False)]
    result, _ = run(shown, truth, exclude)  # the model takes the bulge away
    assert np.array_equal(result.mask, truth) and "12" not in result.stop_reasons
    model = JumpingModel(truth, jump_on=12)  # the model answers another object
    result = correct_with_clicks(model, shown, shown.astype(np.float32), (10, 10, 38, 38), (5, 20), exclude)
    assert np.array_equal(result.mask, shown) and result.changed == []
    assert "outside the shown mask" in result.stop_reasons["12"]
    assert result.probability[12, 33, 24] == 0.0  # the click still tells the graph cut
    # an exclude click at the shown mask's centre says all of it is wrong: the model may answer elsewhere
    centre = correct_with_clicks(JumpingModel(truth, jump_on=12), shown, shown.astype(np.float32), (10, 10, 38, 38),
                                 (5, 20), [Click((12, 24, 24), False)])
    assert "12" not in centre.stop_reasons and np.array_equal(centre.mask[12], model.segment_slice(12, (0, 0, 47, 47)).mask)
    # the panel tells the user which answer was not taken, as Session.correct reports it
    report = {"mode": "refine", "correction": {"clicks": 1, "stop_reasons": result.stop_reasons,
                                               "click_model": "mobilesam"}}
    lines = report_lines(report)
    assert any(line.startswith("click correction, 12: slice 12: ") and "outside the shown mask" in line for line in lines)
    assert lines[-1] == "mode refine, 1 clicks (clicked slices asked of mobilesam)"
    # on a slice mask a few pixels across (a structure's end) a click 3 px from its edge trims it: deeper than half
    # the mask's depth, yet the model's answer elsewhere is still another object
    small = truth.copy()
    small[20] = False
    small[20, 20:29, 20:29] = True  # deepest point 5 px from the edge
    trimmed = correct_with_clicks(JumpingModel(truth, jump_on=20), small, small.astype(np.float32), (10, 10, 38, 38),
                                  (5, 20), [Click((20, 22, 24), False)])
    assert np.array_equal(trimmed.mask, small) and "outside the shown mask" in trimmed.stop_reasons["20"]
    # an include click past the structure's end: the end continues, a larger object does not
    ended = truth.copy()
    ended[20] = False
    include = [Click((20, 24, 24), True)]
    result, _ = run(ended, truth, include)
    assert np.array_equal(result.mask, truth)
    model = JumpingModel(truth, jump_on=20, radius=16, centre=(24, 24))  # 797 pixels against the largest slice's 317
    result = correct_with_clicks(model, ended, ended.astype(np.float32), (10, 10, 38, 38), (5, 20), include)
    assert not result.mask[20].any() and "outgrows the structure's largest slice" in result.stop_reasons["20"]
