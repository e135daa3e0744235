"""The benchmark metrics and the simulated clicker (benchmarks/seg_metrics.py, benchmarks/click_sim.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from click_sim import click_session, next_click, noc  # noqa: E402
from seg_metrics import all_metrics, assd_mm, dice, end_slice_errors, hd95_mm  # noqa: E402


def cube(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_dice_values():
    a = cube((10, 10, 10), (0, 0, 0), (4, 10, 10))
    b = cube((10, 10, 10), (2, 0, 0), (6, 10, 10))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_surface_distances_of_a_shifted_cube_in_mm():
    truth = cube((20, 20, 20), (5, 5, 5), (15, 15, 15))
    shifted = cube((20, 20, 20), (7, 5, 5), (17, 15, 15))  # 2 slices along k
    # spacing (k, j, i) = (3, 1, 1) mm: the k faces are 6 mm apart, side faces 0 mm
    assert hd95_mm(shifted, truth, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert 0 < assd_mm(shifted, truth, (3.0, 1.0, 1.0)) < 6.0
    assert hd95_mm(truth, truth, (1, 1, 1)) == 0.0
    assert np.isnan(hd95_mm(np.zeros_like(truth), truth, (1, 1, 1)))


def test_end_slice_errors_are_signed():
    truth = cube((20, 8, 8), (5, 2, 2), (15, 6, 6))
    longer = cube((20, 8, 8), (3, 2, 2), (13, 6, 6))  # starts 2 early (overshoot), stops 2 short
    assert end_slice_errors(longer, truth) == (2.0, -2.0)
    metrics = all_metrics(longer, truth, (1.0, 1.0, 2.0))
    assert metrics["end_lower"] == 2.0 and metrics["end_upper"] == -2.0 and not metrics["empty"]
    with pytest.raises(ValueError, match="ground truth is empty"):
        end_slice_errors(truth, np.zeros_like(truth))


def test_click_goes_to_the_centre_of_the_largest_error():
    truth = cube((20, 20, 20), (4, 4, 4), (16, 16, 16))
    pred = truth.copy()
    pred[8:13, 8:13, 8:13] = False  # a 5^3 miss inside
    pred[0:2, 0:2, 0:2] = True  # a small false positive
    (k, j, i), positive = next_click(pred, truth)
    assert positive and (k, j, i) == (10, 10, 10)
    fp_only = truth | cube((20, 20, 20), (0, 0, 0), (3, 20, 20))
    point, positive = next_click(fp_only, truth)
    assert not positive and point[0] in (0, 1, 2)
    assert next_click(truth, truth) is None


def test_click_session_and_noc():
    truth = cube((16, 16, 16), (4, 4, 4), (12, 12, 12))

    def oracle(positive_kji, negative_kji):  # each positive click fills the truth, like a perfect refiner
        return truth.copy() if len(positive_kji) else np.zeros_like(truth)

    dices, clicks = click_session(oracle, np.zeros_like(truth), truth, (1, 1, 1), budget=3)
    assert dices == [0.0, 1.0, 1.0, 1.0] and len(clicks) == 1
    assert noc(dices, 0.9, 3) == 1
    assert noc([0.5, 0.6, 0.7], 0.9, 10) == 10
    assert noc([0.95], 0.9, 10) == 0


def test_the_sequence_summary_sets_each_volume_as_1st_against_the_same_volume_as_last():
    from bench_head_sequence import summary

    def row(case, start, position, clicks):
        return dict(case=case, start=start, position=position, structure="liver", arm="stored",
                    dices=[0.5] * (clicks + 1), clicks_to_target=clicks)

    # two sequences of 2 volumes over a pool of 2: A then B, B then A
    rows = [row("A", 0, 1, 4), row("B", 0, 2, 1), row("B", 1, 1, 6), row("A", 1, 2, 2)]
    figures = summary(rows)["stored"]
    assert figures["first"] == 10 and figures["last"] == 3
    assert figures["same"] == (10, 3)  # A: 4 fresh -> 2 last; B: 6 -> 1
    assert summary(rows[:2])["stored"]["same"] == (0, 0)  # one sequence: no volume was both
