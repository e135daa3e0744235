"""The appearance rule's reference (segment/appearance.py), and the one taught by earlier volumes."""

from __future__ import annotations

import numpy as np
from MedFoundationSegLib.segment import appearance


def _slice() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, tissue, answer): 60 px of tissue at 40 and 50 px of fat at -90 in the model's answer."""
    image = np.full((20, 20), -90.0)
    tissue = np.zeros((20, 20), bool)
    tissue[2:8, 2:12] = True
    image[tissue] = 40.0 + np.random.default_rng(0).normal(0, 2, tissue.sum())
    answer = tissue.copy()
    answer[8:13, 2:12] = True
    return image, tissue, answer


def test_the_taught_reference_is_the_answers_pixels_like_the_best_matching_earlier_volume():
    image, tissue, answer = _slice()
    own = appearance.of_pixels(image[answer])
    assert appearance.like(image[answer], own, 2.5).all()  # from the whole answer, the fat passes
    looks = np.array([[150.0, 10.0], [np.nan, np.nan], [-80.0, 10.0], [42.0, 5.0]])
    reference = appearance.learned_reference(image, answer, looks, 2.5, 12)
    np.testing.assert_allclose(reference, appearance.of_pixels(image[tissue]))
    assert not appearance.like(-90.0, reference, 2.5) and appearance.like(image[tissue], reference, 2.5).mean() > 0.95


def test_no_taught_reference_where_no_earlier_volume_holds_enough_of_the_answer():
    image, tissue, answer = _slice()
    assert appearance.learned_reference(image, answer, np.array([[150.0, 10.0]]), 2.5, 12) is None  # another phase
    assert appearance.learned_reference(image, answer, np.full((2, 2), np.nan), 2.5, 12) is None  # unknown
    few = answer & ~tissue
    few[2, 2:5] = True  # 3 px of tissue: below the share and the pixel count
    assert appearance.learned_reference(image, few, np.array([[42.0, 5.0]]), 2.5, 12) is None
    assert appearance.learned_reference(image, answer, np.array([[42.0, 5.0]]), 2.5, 61) is None
    assert appearance.of_pixels(np.full(5, 7.0)) == (7.0, 1.0)  # a flat region keeps a spread of 1


def test_no_taught_reference_from_one_tail_of_the_structure_in_another_contrast_phase():
    """An earlier native-phase volume (45 +- 17) holds the lower half of this venous-phase tissue (87 +- 10): enough
    of the answer, but centred far from its own mean, so it teaches nothing here."""
    image, tissue, answer = _slice()
    image[tissue] = 87.0 + np.random.default_rng(1).normal(0, 10, tissue.sum())
    held = appearance.like(image[answer], (45.0, 17.0), 2.5)
    assert held.sum() >= max(12, appearance.LEARNED_SHARE * answer.sum())
    assert appearance.learned_reference(image, answer, np.array([[45.0, 17.0]]), 2.5, 12) is None
    assert appearance.learned_reference(image, answer, np.array([[45.0, 17.0], [85.0, 12.0]]), 2.5, 12) is not None
