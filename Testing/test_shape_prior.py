"""A structure's shape learned across a dataset (segment/shape_prior.py), carried in its stored head."""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.io.head_store import HeadStore, head_to_json, json_to_head_arrays
from MedFoundationSegLib.segment import shape_prior as sp
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.workflow import learning
from MedFoundationSegLib.workflow.results import CaseResult

SHAPE = (30, 100, 100)


def ellipsoid(centre_kji, radii_kji) -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre_kji, radii_kji)) <= 1


def box_of(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_a_shape_maps_into_another_box_by_its_position_and_size():
    first = ellipsoid((15, 50, 40), (8, 20, 25))
    grid = sp.to_box_grid(first, box_of(first))
    assert grid.shape == sp.GRID_KJI and 0 <= grid.min() and grid.max() <= 1
    assert dice(sp.from_box_grid(grid, box_of(first), SHAPE) >= 0.5, first) > 0.9
    moved = ellipsoid((12, 60, 55), (6, 30, 20))  # elsewhere, longer in j, shorter in k and i
    mapped = sp.from_box_grid(grid, box_of(moved), SHAPE) >= 0.5
    assert dice(mapped, moved) > 0.9 and dice(mapped, first) < 0.6


def test_the_shape_is_the_mean_of_the_signed_masks_and_counts_more_with_more_volumes():
    a, b = ellipsoid((15, 50, 50), (8, 20, 20)), ellipsoid((15, 50, 50), (8, 20, 20)) & (np.arange(100) < 50)
    box = box_of(a)
    mean = sp.updated(sp.updated(None, 0, a, box), 1, b, box)
    np.testing.assert_allclose(mean, (sp.to_box_grid(a, box) + sp.to_box_grid(b, box)) / 2, atol=1e-6)
    unsure = np.full(SHAPE, 0.5, np.float32)
    inside, outside = (15, 50, 50), (15, 50, 5)
    shape = sp.to_box_grid(a, box)
    one, three = sp.blend(unsure, shape, 1, box), sp.blend(unsure, shape, 3, box)
    assert 0.5 < one[inside] < three[inside] < 1 and 0 < three[outside] < one[outside] < 0.5
    sure = np.where(a, 0.999, 0.001).astype(np.float32)  # where the model is sure, the shape does not overrule it
    assert np.array_equal(sp.blend(sure, sp.to_box_grid(b, box), 3, box) >= 0.5, a)


def _head(shape=None, shape_volumes=0) -> sh.StructureHead:
    return sh.StructureHead("litemedsam", np.ones(4, np.float32), 0.1, np.zeros(4, np.float32),
                            np.ones(4, np.float32), volumes=2, cells=10, shape=shape, shape_volumes=shape_volumes)


def test_a_heads_shape_survives_the_store_and_the_wire(tmp_path):
    mask = ellipsoid((15, 50, 40), (8, 20, 25))
    head = _head(sp.to_box_grid(mask, box_of(mask)), 3)
    store = HeadStore(tmp_path)
    store.save("liver", "litemedsam", head.to_arrays())
    stored = sh.StructureHead.from_arrays(store.load("liver", "litemedsam"))
    np.testing.assert_array_equal(stored.shape, head.shape)
    wired = sh.StructureHead.from_arrays(json_to_head_arrays(head_to_json(head.to_arrays())))
    np.testing.assert_allclose(wired.shape, head.shape, atol=5e-4)
    assert stored.shape_volumes == wired.shape_volumes == 3
    assert sh.StructureHead.from_arrays(_head().to_arrays()).shape is None  # heads stored before shapes still load


@pytest.mark.parametrize("shape", [np.full(sp.GRID_KJI, 1.5, np.float32), np.zeros((4, 4, 4), np.float32),
                                   np.full(sp.GRID_KJI, np.nan, np.float32)])
def test_a_bad_shape_is_refused(shape):
    arrays = _head().to_arrays() | {"shape": shape, "shape_volumes": np.array(1)}
    with pytest.raises(sh.HeadError, match="shape"):
        sh.StructureHead.from_arrays(arrays)


def test_the_head_a_result_hands_back_holds_the_prior_shape_averaged_with_its_mask():
    earlier, now = ellipsoid((15, 50, 40), (8, 20, 25)), ellipsoid((15, 50, 40), (8, 10, 25))
    box = box_of(earlier)
    prior = _head(sp.to_box_grid(earlier, box), 1)
    learned = CaseResult(now, now.astype(np.float32), {}, head=_head().to_arrays())
    image = now.astype(np.float32) * 100
    head = learning.with_shape(learned, prior, box, image).head
    np.testing.assert_allclose(head["shape"], sp.updated(prior.shape, 1, now, box))
    assert int(head["shape_volumes"]) == 2 and head["atlas_masks"].shape[0] == 1  # the prior held no atlas
    assert learning.with_shape(CaseResult(now), prior, box, image).head is None  # nothing learned, nothing to store
    first = learning.with_shape(learned, None, box, image).head  # the first volume starts the shape
    np.testing.assert_allclose(first["shape"], sp.to_box_grid(now, box))
    assert int(first["shape_volumes"]) == 1


def test_a_first_segmentation_takes_the_shape_where_the_model_missed_it():
    structure = ellipsoid((15, 50, 50), (8, 20, 20))
    box = box_of(structure)
    prior = _head(sp.to_box_grid(structure, box), 3)
    model_probability = np.where(structure, 0.9, 0.05).astype(np.float32)
    model_probability[:, :, 50:] = np.where(structure[:, :, 50:], 0.4, 0.05)  # unsure of one half
    shown = CaseResult(model_probability >= 0.5, model_probability, {"model": "litemedsam"})
    image, spacing = structure.astype(np.float32), (1.0, 1.0, 1.0)
    started = learning.add_shape(shown, prior, box, image, spacing)
    assert dice(shown.mask_kji, structure) < 0.75
    assert dice(started.mask_kji, structure) > 0.9
    assert started.report["shape_prior"] == {"volumes": 3, "from": "mean shape in the box"}
    assert learning.add_shape(shown, _head(), box, image, spacing) is shown  # a head without a shape changes nothing


def test_a_signed_mask_the_head_cannot_learn_still_teaches_the_shape(monkeypatch):
    """learn_signed: where the head cannot reproduce the signed mask, the prior's weights stay and the shape learns;
    without a prior the head holds only the shape, and the next volume learns the weights afresh."""
    import types

    from MedFoundationSegLib.segment import decoder_adaptation

    # these embeddings have no model behind them; test_decoder_adaptation.py adapts a real decoder
    monkeypatch.setattr(decoder_adaptation, "adapt", lambda *args, **kwargs: None)

    from test_head_learning import SHAPE as HEAD_SHAPE
    from test_head_learning import EmbeddingPredictor, disks

    truth = disks()
    box = box_of(truth)
    segmenter = types.SimpleNamespace(predictor=EmbeddingPredictor(truth))
    learned = learning.learn_signed(segmenter, truth, box, "axial", "litemedsam")
    assert learned is not None and learned.volumes == 1 and learned.shape_volumes == 1
    noise = np.random.default_rng(0).random(HEAD_SHAPE) < 0.5  # nothing the embeddings can tell
    noise &= np.zeros(HEAD_SHAPE, bool) | (np.arange(HEAD_SHAPE[0]) >= 4)[:, None, None]
    again = learning.learn_signed(segmenter, noise, box, "axial", "litemedsam", prior=learned)
    np.testing.assert_array_equal(again.weights, learned.weights)
    assert again.volumes == 1 and again.shape_volumes == 2
    np.testing.assert_allclose(again.shape, sp.updated(learned.shape, 1, noise, box))
    shape_only = learning.learn_signed(segmenter, noise, box, "axial", "litemedsam")  # no prior: the shape alone
    assert shape_only.volumes == 0 and shape_only.shape_volumes == 1
    assert learning.weights_prior(shape_only) is None and learning.weights_prior(learned) is learned
    grown = learning.learn_signed(segmenter, truth, box, "axial", "litemedsam", prior=shape_only)
    assert grown.volumes == 1 and grown.shape_volumes == 2  # its weights learned afresh, not from the shape-only head
    assert not np.array_equal(grown.weights, shape_only.weights)


def test_the_grid_holds_block_means_inside_the_volume_and_nothing_beyond_it():
    mask = np.zeros(SHAPE, bool)
    mask[:6, 40:60, 30:70] = True  # a structure cut by the volume's first slice
    box = box_of(mask)
    grid = sp.to_box_grid(mask, box)
    origin, step = sp.grid_frame(box)
    beyond = origin[0] + step[0] * np.arange(sp.GRID_KJI[0]) < -0.5
    assert beyond.any() and not grid[beyond].any()  # the grown box reaches past slice 0: no structure there
    node = np.rint(origin + step * (np.array(sp.GRID_KJI) // 2)).astype(int)  # the box's middle node, inside
    assert grid[tuple(np.array(sp.GRID_KJI) // 2)] == pytest.approx(1.0) and mask[tuple(node)]
    assert dice(sp.from_box_grid(grid, box, SHAPE) >= 0.5, mask) > 0.9
