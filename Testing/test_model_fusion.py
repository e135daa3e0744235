"""fuse_by_agreement: what two models agree on stays; the image decides the voxels they dispute."""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.segment.model_fusion import fuse_by_agreement
from MedFoundationSegLib.workflow.options import Options


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def scene():
    """A bright ball on a dark background; one model misses its right third, the other leaks into the dark left."""
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[:24, :64, :64]
    ball = (k - 12) ** 2 / 64 + ((j - 32) ** 2 + (i - 32) ** 2) / 225 <= 1
    image = np.where(ball, 200.0, 20.0) + rng.normal(0, 8, ball.shape)
    under = ball & (i < 38)
    leak = ball | ((np.abs(j - 32) < 12) & (i >= 4) & (i < 20) & (np.abs(k - 12) < 7))
    probabilities = [np.where(under, 0.9, 0.1), np.where(leak, 0.8, 0.2)]
    kk, jj, ii = np.nonzero(ball)
    box = ((kk.min(), kk.max()), (jj.min(), jj.max()), (ii.min() - 12, ii.max()))
    return image, ball, under, leak, probabilities, box


def test_disputed_voxels_follow_the_image(scene):
    image, ball, under, leak, probabilities, box = scene
    mask, mean = fuse_by_agreement(image, probabilities, box)
    assert dice(under, ball) < 0.9 and dice(leak, ball) < 0.9
    assert dice(mask, ball) > 0.97
    assert mask[under & leak].all()  # agreed foreground stays
    assert not mask[~under & ~leak].any()  # agreed background stays
    assert np.allclose(mean, (probabilities[0] + probabilities[1]) / 2)


def test_the_mean_alone_would_keep_the_confident_leak(scene):
    image, ball, under, leak, probabilities, box = scene
    probabilities = [np.where(under, 0.6, 0.4), np.where(leak, 0.99, 0.01)]
    mask, mean = fuse_by_agreement(image, probabilities, box)
    assert (mean > 0.5)[leak & ~ball].all()  # averaging lets the confident model win
    assert dice(mask, ball) > 0.95 and dice(mask, ball) > dice(mean > 0.5, ball) + 0.05


def test_refuses_one_model_or_mismatched_maps(scene):
    image, _, _, _, probabilities, box = scene
    with pytest.raises(ValueError, match="at least two models"):
        fuse_by_agreement(image, probabilities[:1], box)
    with pytest.raises(ValueError, match="do not match the image"):
        fuse_by_agreement(image, [p[:, :32] for p in probabilities], box)


def test_models_fusion_is_an_option_with_a_second_model():
    options = Options(fusion="models")
    assert options.fusion_model == "mobilesam"
    with pytest.raises(ValueError, match="unknown fusion"):
        Options(fusion="vote")
