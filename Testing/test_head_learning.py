"""Learning from the user within a volume (segment/head_learning.py) and the per-structure head store (io/head_store.py)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from MedFoundationSegLib.io.head_store import HeadStore, HeadStoreError
from MedFoundationSegLib.segment import head_learning as hl
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.segment.clicks import Click
from MedFoundationSegLib.segment.preprocessing import preprocessing_for, slice_transform

SHAPE = (24, 48, 48)
CELLS = 64


def disks() -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return ((j - 24) ** 2 + (i - 22) ** 2 <= 120) & (k >= 4) & (k <= 19)


class EmbeddingPredictor:
    """Slice embeddings in which one channel tells the structure from its surroundings (noisily); the rest is noise."""

    def __init__(self, truth: np.ndarray, seed: int = 0):
        self.transform = slice_transform(SHAPE[1:], preprocessing_for("litemedsam"))
        rng = np.random.default_rng(seed)
        self.embeddings = []
        for k in range(SHAPE[0]):
            share = np.nan_to_num(sh.mask_to_cells(truth[k], self.transform, CELLS))
            channels = rng.normal(0, 1, (8, CELLS, CELLS)).astype(np.float32)
            channels[0] = 3 * share - 1.5 + rng.normal(0, 0.5, (CELLS, CELLS))
            self.embeddings.append(torch.from_numpy(channels)[None])

    def embedding(self, k: int) -> torch.Tensor:
        return self.embeddings[k]


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_errors_on_single_slices_are_fixed_where_nobody_clicked():
    truth = disks()
    shown = truth.copy()
    for k in (8, 12, 16):  # the model missed half the structure on these slices
        shown[k, :, 22:] = False
    predictor = EmbeddingPredictor(truth)
    learned = hl.learn_in_box(predictor, shown, (10, 12, 34, 36), (4, 19), [Click((10, 24, 22), True)], "litemedsam")
    assert learned.slices == (4, 19)
    for k in (8, 12, 16):
        assert dice(shown[k], truth[k]) < 0.7
        assert dice(learned.probability[k] > 0.5, truth[k]) > 0.9
    assert not (learned.probability[:4] > 0).any() and not (learned.probability[20:] > 0).any()
    shown_probability = shown.astype(np.float32)
    kept = hl.blend(shown_probability, learned) > 0.5
    for k in (8, 12, 16):  # the missed half is a wide disagreement: the head fills it
        assert dice(kept[k], truth[k]) > 0.9
    for k in (6, 10, 14):  # where the shown mask was right, its boundary stands
        assert (kept[k] != shown[k]).mean() < 0.01
    blended = hl.blend(np.zeros(SHAPE, np.float32), learned, [Click((2, 5, 5), True), Click((12, 24, 22), False)])
    assert blended[2, 5, 5] == 1.0 and blended[12, 24, 22] == 0.0  # the clicks hold in a mask taken at 0.5


def test_a_head_from_earlier_volumes_overrules_an_error_this_volumes_masks_repeat():
    truth = disks()
    earlier, this = EmbeddingPredictor(truth, seed=1), EmbeddingPredictor(truth, seed=2)
    for predictor in (earlier, this):  # the structure's right part is a tissue of its own (as vessels in a liver)
        for embedding in predictor.embeddings:
            embedding[0, 1] = 0.0
            embedding[0, 1, :, 30:] = 3.0
    prior = hl.learn_in_box(earlier, truth, (10, 12, 34, 36), (4, 19), [], "litemedsam").head
    prior.volumes = 1
    shown = truth.copy()
    shown[:, :, 22:] = False  # the model leaves that tissue out on every slice of this volume
    fresh = hl.learn_in_box(this, shown, (10, 12, 34, 36), (4, 19), [], "litemedsam")
    warm = hl.learn_in_box(this, shown, (10, 12, 34, 36), (4, 19), [], "litemedsam", prior=prior)
    assert dice(fresh.probability > 0.5, truth) < 0.8  # learned from this volume alone, the error is learned too
    assert dice(warm.probability > 0.5, truth) > 0.95 and warm.usable


def test_samples_weigh_clicked_slices_and_clicks():
    truth = disks()
    predictor = EmbeddingPredictor(truth)
    clicks = [Click((10, 24, 22), True), Click((11, 2, 2), False)]
    features, targets, weights = hl.box_samples(predictor, truth, (10, 12, 34, 36), range(9, 13), clicks)
    assert features.shape[1] == 8 and len(features) == len(targets) == len(weights)
    per_slice = (len(targets) - 2) // 4
    assert np.all(weights[per_slice:2 * per_slice] == hl.CLICKED_SLICE_WEIGHT)  # slice 10 was clicked
    assert np.all(weights[2 * per_slice:3 * per_slice] == hl.CLICKED_SLICE_WEIGHT)  # slice 11 too
    assert np.all(weights[:per_slice] == 1.0)
    assert list(targets[-2:]) == [1.0, 0.0]
    fg_total = weights[:-2][targets[:-2] > 0.5].sum()
    assert weights[-2] == pytest.approx(hl.CLICK_SHARE * fg_total, rel=1e-5)
    assert hl.click_cell((10, 47, 0), predictor.transform, CELLS) == (63, 0)


def test_a_large_box_is_fitted_on_every_clicked_slice_and_every_nth_other_one(monkeypatch):
    truth = disks()
    predictor = EmbeddingPredictor(truth)
    box = (10, 12, 34, 36)
    rows, cols = sh.box_cells(box, predictor.transform, CELLS)
    per_slice = (rows.stop - rows.start) * (cols.stop - cols.start)
    monkeypatch.setattr(hl, "MAX_FIT_CELLS", 20 * per_slice)
    assert hl.fit_slices(predictor, box, range(2, 22), {7}) == (list(range(2, 22)), 1)  # they fit: every slice
    monkeypatch.setattr(hl, "MAX_FIT_CELLS", 10 * per_slice)
    chosen, stride = hl.fit_slices(predictor, box, range(2, 22), {7})
    assert stride == 2 and chosen == sorted({*range(2, 22, 2), 7})
    _, targets, weights = hl.box_samples(predictor, truth, box, chosen, [Click((7, 24, 22), True)], stride=stride)
    assert set(np.unique(weights[:-1])) == {float(stride), hl.CLICKED_SLICE_WEIGHT}  # each unclicked slice stands
    # for ``stride`` of them; the fit still reproduces the structure
    learned = hl.learn_in_box(predictor, truth, box, (2, 21), [Click((7, 24, 22), True)], "litemedsam")
    assert learned.agreement > 0.9


def test_the_store_keeps_heads_per_structure_and_model_and_refuses_bad_names(tmp_path):
    rng = np.random.default_rng(0)
    head = sh.fit_head(rng.normal(0, 1, (50, 8)).astype(np.float32), (rng.random(50) > 0.5).astype(np.float32),
                       "litemedsam")
    head.volumes = 3
    store = HeadStore(tmp_path / "templates")
    assert store.load("liver", "litemedsam") is None
    path = store.save("liver", "litemedsam", head.to_arrays())
    assert path == tmp_path / "templates" / "heads" / "liver.litemedsam.npz"
    again = sh.StructureHead.from_arrays(store.load("liver", "litemedsam"))
    assert again.volumes == 3 and np.allclose(again.weights, head.weights)
    assert store.load("liver", "mobilesam") is None and store.structures("litemedsam") == ["liver"]
    for bad in ("../liver", "a/b", ""):
        with pytest.raises(HeadStoreError):
            store.path(bad, "litemedsam")
    path.write_bytes(b"not a zip")
    with pytest.raises(HeadStoreError, match="cannot be read"):
        store.load("liver", "litemedsam")


def test_a_stored_head_has_the_mode_of_any_new_file_and_leaves_no_temporary_file(tmp_path):
    head = sh.fit_head(np.eye(4, dtype=np.float32), np.array([1, 0, 1, 0], np.float32), "litemedsam")
    store = HeadStore(tmp_path / "templates")
    previous = os.umask(0o022)
    try:
        path = store.save("liver", "litemedsam", head.to_arrays())
        store.save("liver", "litemedsam", head.to_arrays())  # replaced in place
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by a team sharing the template folder
    assert sorted(p.name for p in path.parent.iterdir()) == ["liver.litemedsam.npz"]


def test_fit_weights_must_match_the_samples():
    with pytest.raises(sh.HeadError):
        sh.fit_head(np.zeros((4, 2), np.float32), np.zeros(4, np.float32), "m", weights=np.ones(3))


def test_learn_heads_command_teaches_heads_from_template_labels_and_adds_to_stored_ones(tmp_path, capsys):
    from MedFoundationSegLib.cli.main import main
    from MedFoundationSegLib.core.volume import write_volume
    from MedFoundationSegLib.localize.templates import Template, TemplateSet
    from MedFoundationSegLib.sampledata.phantoms import make_phantom

    templates = []
    for n, seed in enumerate((5, 6)):
        phantom = make_phantom(seed, (24, 96, 96))
        write_volume(phantom.image, tmp_path / f"t{n}.nii.gz")
        write_volume(phantom.labels, tmp_path / f"t{n}_labels.nii.gz")
        templates.append(Template(f"t{n}", image_path=tmp_path / f"t{n}.nii.gz",
                                  labels_path=tmp_path / f"t{n}_labels.nii.gz",
                                  label_ids={"liver": phantom.label_ids["liver"]}))
    TemplateSet([templates[0], Template("unlabelled", image_path=tmp_path / "t0.nii.gz")]).save(tmp_path / "T.yaml")
    assert main(["learn-heads", "--templates", str(tmp_path / "T.yaml"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "unlabelled: no label volume, skipped" in out and "1 head(s) stored" in out and "no decoder layers" in out
    store = HeadStore(tmp_path)
    first = sh.StructureHead.from_arrays(store.load("liver", "litemedsam"))
    assert first.volumes == 1 and first.model == "litemedsam"
    assert first.decoder is None  # decoder layers only with --adapt-decoder
    TemplateSet(templates).save(tmp_path / "T2.yaml")  # t0 again (already learned), and t1
    assert main(["learn-heads", "--templates", str(tmp_path / "T2.yaml"), "--device", "cpu", "--adapt-decoder"]) == 0
    again = store.load("liver", "litemedsam")
    assert int(again["volumes"]) == 2 and int(again["shape_volumes"]) == 2  # the stored head was the prior; t0 once
    assert len(again["atlas_images"]) == 2  # each template's image and mask, an atlas for the query volumes
    assert "decoder.output_upscaling.0.weight" in again  # adapted decoder layers
    out = capsys.readouterr().out
    assert "t0: liver" in out and "shape from 1, 1 atlas(es), decoder layers adapted" in out
    assert "shape from 2, 2 atlas(es), decoder layers adapted" in out


def test_a_bad_prior_head_in_a_request_is_refused_before_any_work():
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.io.head_store import head_to_json
    from MedFoundationSegLib.workflow.actions import EngineRequest, error_code, run_request
    from MedFoundationSegLib.workflow.options import Options

    class NoSession:  # any call into the session would be work done on a bad request
        def __getattr__(self, name):
            def used(*args, **kwargs):
                raise AssertionError(f"the session was used ({name})")
            return used

    rng = np.random.default_rng(0)
    good = head_to_json(sh.fit_head(rng.normal(0, 1, (30, 4)).astype(np.float32),
                                    (rng.random(30) > 0.5).astype(np.float32), "litemedsam").to_arrays())
    volume = Volume(np.zeros((4, 8, 8), np.int16), spacing_mm=(1.0, 1.0, 1.0))
    mask = np.zeros((4, 8, 8), bool)
    bad_heads = {"incomplete": {"model": "litemedsam"}, "not numeric": dict(good, weights=["a"] * 4),
                 "NaN": dict(good, bias=float("nan")), "other model": dict(good, model="mobilesam")}
    for what, head in bad_heads.items():
        request = EngineRequest("refine", volume, Options(), {"prior_head": head, "positive_ijk": [[1, 1, 1]]},
                                {"mask_kji": mask})
        with pytest.raises(ValueError) as error:
            run_request(NoSession(), request)
        assert error_code(error.value) == "bad_input", what


def test_each_slice_window_is_converted_once_per_structure_until_its_embedding_changes(monkeypatch):
    truth = disks()
    predictor = EmbeddingPredictor(truth)
    converted = []
    original = sh.embedding_cells
    monkeypatch.setattr(sh, "embedding_cells", lambda e: converted.append(tuple(e.shape)) or original(e))
    box, click = (10, 12, 34, 36), Click((7, 24, 22), True)
    first = hl.learn_in_box(predictor, truth, box, (4, 19), [click], "litemedsam")
    windows = len(converted)
    assert windows == 16  # one window per slice of the box, not one per use
    again = hl.learn_in_box(predictor, truth, box, (4, 19), [click, Click((9, 30, 30), False)], "litemedsam")
    assert len(converted) == windows  # the next click converts nothing
    predictor.embeddings[9] = predictor.embeddings[9].clone()  # slice 9 re-encoded
    hl.learn_in_box(predictor, truth, box, (4, 19), [click], "litemedsam")
    assert len(converted) == windows + 1
    rows, cols = sh.box_cells(box, predictor.transform, CELLS)
    assert converted[0] == (1, 8, rows.stop - rows.start, cols.stop - cols.start)  # only the box's window
    assert first.agreement > 0.9 and again.agreement > 0.9
    hl.learn_in_box(predictor, truth, (20, 20, 26, 26), (4, 19), [], "litemedsam")  # another window: new ones
    assert len(converted) == windows + 1 + 16 and converted[-1][2] < CELLS


def test_a_segmentation_readies_the_heads_cells_so_the_first_click_converts_none(monkeypatch):
    """The panel's segmentation converts the box's embedding cells for the head (right after the walk, while the
    memory it freed is at hand), so the first click, which fits the head over every slice of the box, converts none."""
    import types

    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow import actions
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLib.workflow.results import CaseResult

    truth = disks()
    predictor = EmbeddingPredictor(truth)
    predictor.is_encoded = lambda k: True
    converted = []
    original = sh.embedding_cells
    monkeypatch.setattr(sh, "embedding_cells", lambda e: converted.append(tuple(e.shape)) or original(e))
    box_ijk = [[12, 10, 4], [36, 34, 19]]  # (i, j, k): columns 12-36, rows 10-34, slices 4-19
    session = types.SimpleNamespace(
        segment_box=lambda volume, box, options, **_: CaseResult(truth, truth.astype(np.float32),
                                                                 {"model": options.model}),
        evidence=types.SimpleNamespace(remember=lambda *args: None), ready_click_model=lambda *args: None,
        segmenter=lambda volume, options: types.SimpleNamespace(predictor=predictor))
    volume = Volume(np.zeros(SHAPE, np.float32), (1.0, 1.0, 1.0))
    for learn, expected in ((False, 0), (True, 16)):
        converted.clear()
        actions.run_request(session, actions.EngineRequest("segment_box", volume, Options(learn=learn),
                                                           {"box_ijk": box_ijk}))
        assert len(converted) == expected  # one window per slice of the box when the head will learn
    hl.learn_in_box(predictor, truth, (12, 10, 36, 34), (4, 19), [Click((7, 24, 22), True)], "litemedsam")
    assert len(converted) == 16  # the first click converted nothing
    converted.clear()
    predictor.is_encoded = lambda k: k < 10  # slices not encoded (a mode that encodes key slices) stay so
    hl._WINDOWS.clear()
    actions.run_request(session, actions.EngineRequest("segment_box", volume, Options(), {"box_ijk": box_ijk}))
    assert len(converted) == 6


def test_the_blend_opens_only_where_the_head_and_the_mask_differ_and_gets_the_whole_volumes_answer():
    from scipy import ndimage
    from skimage.morphology import disk
    rng = np.random.default_rng(0)
    for trial in range(6):
        given = ndimage.gaussian_filter(rng.random((6, 60, 70)), 3)
        head = ndimage.gaussian_filter(rng.random((6, 60, 70)), 3)
        given, head = (given > np.median(given)).astype(np.float32), (head > np.median(head)).astype(np.float32)
        if trial % 2:  # they differ only in a band in the middle
            head[:, :20], head[:, 40:] = given[:, :20], given[:, 40:]
        learned = hl.LearnedHead(None, head, (0, 5), 1.0, cell_px=3.0)
        opened = ndimage.binary_opening((given > 0.5) ^ (head > 0.5), structure=disk(3)[None].astype(bool))
        assert np.array_equal(hl.blend(given, learned), np.where(opened, head, given))


def test_an_unsure_head_of_a_model_whose_masks_reach_the_edge_only_takes_away():
    given = np.zeros((3, 40, 40), np.float32)
    given[:, 10:30, 10:30] = 0.9
    head = np.zeros_like(given)
    head[:, 14:34, 14:34] = 0.9  # misses the mask's top left, adds past its bottom right
    both = hl.blend(given, hl.LearnedHead(None, head, (0, 2), 0.85, cell_px=1.0)) > 0.5
    assert both[:, 31, 31].all() and not both[:, 11, 11].any()  # it adds and takes away
    taken = hl.blend(given, hl.LearnedHead(None, head, (0, 2), 0.85, cell_px=1.0), adds_from=0.9) > 0.5
    assert not taken[:, 31, 31].any() and not taken[:, 11, 11].any()  # it only takes away
    sure = hl.blend(given, hl.LearnedHead(None, head, (0, 2), 0.95, cell_px=1.0), adds_from=0.9) > 0.5
    assert np.array_equal(sure, both)  # a head agreeing more, or one from earlier volumes, does both
    assert np.array_equal(hl.blend(given, hl.LearnedHead(None, head, (0, 2), 0.85, True, 1.0), adds_from=0.9) > 0.5, both)
    assert hl.head_adds_from("mobilesam") == 0.9 and hl.head_adds_from("litemedsam") == hl.MIN_AGREEMENT


def test_the_blends_opening_by_opencv_equals_scipys_with_the_same_disk():
    from scipy import ndimage
    from skimage.morphology import disk

    rng = np.random.default_rng(3)
    nontrivial = 0
    for _ in range(12):
        shape = (int(rng.integers(1, 6)), int(rng.integers(16, 120)), int(rng.integers(16, 120)))
        mask = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 6)))
        radius = int(rng.integers(1, 10))
        expected = ndimage.binary_opening(mask, structure=disk(radius)[None].astype(bool))
        assert np.array_equal(hl.open_slices(mask, radius), expected), (shape, radius)
        nontrivial += bool(expected.any()) and not np.array_equal(expected, mask)
    assert nontrivial >= 4  # openings that kept something and took something away
