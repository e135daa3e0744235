"""The appearance rule of a walk: an answer, or a pixel, is like the structure where its intensity lies within a few
spreads of the structure's mean on the slices the walk started from (or, taught by earlier volumes, on their pixels
like the structure there).

Why: past a structure's end, or where a thin structure leaves a drawn box, a box prompt makes the model answer with
the tissue beside it (lung above a liver's dome, fat around a pancreas); its intensity tells it apart.
"""

from __future__ import annotations

import numpy as np

LEARNED_SHARE = 0.25  # the least share of the middle slice's answer a learned appearance must hold to be used
CENTRED_SIGMAS = 1.0  # how far (in its spreads) from a learned appearance's mean the pixels it holds may centre


def of_pixels(values) -> tuple[float, float]:
    """The (mean, spread) of the given intensities; the spread at least 1 (a flat region still has a rule)."""
    values = np.asarray(values, float)
    return float(values.mean()), max(float(values.std()), 1.0)


def like(intensity, reference: tuple[float, float], sigmas: float):
    """Whether ``intensity`` (an answer's mean, or a slice's pixels, element by element) lies within ``sigmas``
    spreads of the ``reference`` (mean, spread)."""
    mean, spread = reference
    return np.abs(np.asarray(intensity, float) - mean) <= sigmas * spread


def learned_reference(image_hw: np.ndarray, answer_hw: np.ndarray, appearances, sigmas: float,
                      min_pixels: int) -> tuple[float, float] | None:
    """The reference taught by earlier volumes: the (mean, spread) of the pixels of ``answer_hw`` (the model's answer
    on the slice the walk starts from) that are like the structure in the earlier volume whose appearance
    (``appearances``: one (mean, spread) row per volume, NaN where unknown) holds most of them, at least
    ``LEARNED_SHARE`` of the answer and ``min_pixels``, centred within ``CENTRED_SIGMAS`` of its mean (not one tail of
    the structure in another contrast phase); None where no earlier volume does. Why: on a thin structure the model's
    answer may be half the fat beside it, and a reference taken from all of it lets the fat pass; the answer's own
    pixels keep the reference in this volume's units."""
    answer_hw = np.asarray(answer_hw, bool)
    least = max(min_pixels, LEARNED_SHARE * answer_hw.sum())
    best, reference = 0, None
    for mean, spread in np.asarray(appearances, float).reshape(-1, 2):
        if not (np.isfinite(mean) and np.isfinite(spread)):
            continue
        look = (mean, max(spread, 1.0))
        held = answer_hw & like(image_hw, look, sigmas)
        if held.sum() >= least and held.sum() > best:
            candidate = of_pixels(np.asarray(image_hw)[held])
            if like(candidate[0], look, CENTRED_SIGMAS):
                best, reference = int(held.sum()), candidate
    return reference
