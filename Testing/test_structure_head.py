"""The structure head: a logistic read-out of slice embeddings, learned from signed masks (segment/structure_head.py)."""

import numpy as np
import pytest
import torch
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.segment.preprocessing import preprocessing_for, slice_transform


def _cells(rng, n, shift):
    """Two tissue classes whose embeddings differ along a few channels."""
    labels = rng.random(n) < 0.3
    features = rng.normal(0, 1, (n, 16)).astype(np.float32)
    features[labels, :3] += shift
    return features, labels.astype(np.float32)


def test_fit_separates_the_classes_and_round_trips_through_plain_arrays():
    rng = np.random.default_rng(0)
    features, labels = _cells(rng, 2000, 2.5)
    head = sh.fit_head(features, labels, "litemedsam")
    test_x, test_y = _cells(rng, 2000, 2.5)
    accuracy = np.mean((head.logits(test_x) > 0) == (test_y > 0.5))
    assert accuracy > 0.9
    again = sh.StructureHead.from_arrays(head.to_arrays())
    np.testing.assert_allclose(again.logits(test_x), head.logits(test_x), rtol=1e-6)


def test_a_prior_from_earlier_volumes_is_adjusted_not_replaced():
    rng = np.random.default_rng(1)
    prior = sh.fit_head(*_cells(rng, 2000, 2.5), "litemedsam")
    prior.volumes = 5
    few_x, few_y = _cells(rng, 20, 2.5)
    few_y[:8] = 1.0 - few_y[:8]  # a small, noisy sample: a fresh fit learns little from it
    fresh = sh.fit_head(few_x, few_y, "litemedsam")
    warm = sh.fit_head(few_x, few_y, "litemedsam", prior=prior)
    test_x, test_y = _cells(rng, 2000, 2.5)
    assert np.mean((warm.logits(test_x) > 0) == (test_y > 0.5)) > np.mean((fresh.logits(test_x) > 0) == (test_y > 0.5))
    assert warm.volumes == 5 and np.all(warm.mean == prior.mean)


def test_logits_and_their_slices_come_out_the_same_one_slice_or_many_at_once():
    rng = np.random.default_rng(3)
    head = sh.fit_head(*_cells(rng, 500, 2.5), "litemedsam")
    cells = rng.normal(0, 1, (7, 16)).astype(np.float32)
    np.testing.assert_allclose(head.logits(cells), ((cells - head.mean) / head.scale) @ head.weights + head.bias,
                               rtol=1e-4, atol=1e-4)
    transform = slice_transform((100, 200), preprocessing_for("litemedsam"))
    grids = rng.normal(0, 3, (3, 64, 64)).astype(np.float32)
    together = sh.cell_logits_to_slice(grids, transform)
    assert together.shape == (3, 100, 200)
    for grid, slice_logits in zip(grids, together):
        np.testing.assert_allclose(sh.cell_logits_to_slice(grid, transform), slice_logits, rtol=1e-5, atol=1e-5)


def test_mask_cells_and_logits_follow_the_models_geometry():
    transform = slice_transform((100, 200), preprocessing_for("litemedsam"))
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # the left half
    share = sh.mask_to_cells(mask, transform, 64)
    assert np.isnan(share[40:, :]).all()  # the padding below a wide slice
    assert share[:32, :16].min() == 1.0 and share[:32, 48:].max() == 0.0
    logits = np.where(np.isnan(share), -8.0, np.where(share > 0.5, 8.0, -8.0))
    back = sh.cell_logits_to_slice(logits, transform) > 0
    assert back.shape == (100, 200) and (back == mask).mean() > 0.98
    rows, cols = sh.box_cells((50, 20, 149, 79), transform, 64, context=0.0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (6, 26, 16, 48)


def test_bad_heads_are_refused():
    with pytest.raises(sh.HeadError):
        sh.StructureHead.from_arrays({"format": np.array("something else")})
    head = sh.fit_head(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1], np.float32), "litemedsam")
    with pytest.raises(sh.HeadError, match="features"):
        sh.fit_head(np.ones((4, 5), np.float32), np.zeros(4, np.float32), "litemedsam", prior=head)


@pytest.mark.parametrize("model, slice_hw", [("mobilesam", (100, 200)), ("sam_vit_b", (128, 96)),
                                             ("litemedsam", (100, 200))])
def test_cell_logits_reach_the_slice_as_the_models_own_logits_do(model, slice_hw):
    transform = slice_transform(slice_hw, preprocessing_for(model))
    grids = np.random.default_rng(4).normal(0, 3, (2, 64, 64)).astype(np.float32)
    reference = transform.logits_to_slice(torch.from_numpy(grids[:, None]))[:, 0].numpy()
    np.testing.assert_allclose(sh.cell_logits_to_slice(grids, transform), reference, rtol=1e-4, atol=1e-4)
