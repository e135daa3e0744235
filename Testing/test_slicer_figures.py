"""The README figure script draws boxes, points and masks where the voxels are: a wrong flip or scale would put an ROI
or a click beside its structure in the walkthrough, so the slice-view geometry is checked on a tiny anisotropic grid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_slicer_figures.py"


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("make_slicer_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("plane, index", [("axial", 3), ("coronal", 5), ("sagittal", 7)])
def test_points_land_on_their_voxel_in_every_plane(figures, plane, index):
    shape_kji, spacing_ijk = (6, 11, 13), (0.8, 1.3, 4.0)
    array = np.zeros(shape_kji, np.int16)
    view = figures.SliceView(array, spacing_ijk, plane, index)
    assert view.size == (round(view.shape[view.cols_axis] * view.scale[0]),
                         round(view.shape[view.rows_axis] * view.scale[1]))
    rng = np.random.default_rng(0)
    for _ in range(10):
        ijk = np.array([rng.integers(0, 13), rng.integers(0, 11), rng.integers(0, 6)])
        ijk[2 - view.fixed] = index  # on this plane
        mask = np.zeros(shape_kji, bool)
        mask[ijk[2], ijk[1], ijk[0]] = True
        x, y = view.to_px(ijk)
        assert view.mask_px(mask)[int(y), int(x)], (plane, ijk, x, y)
        assert view.distance_voxels(ijk) == 0


def test_superior_is_drawn_at_the_top_and_boxes_skip_planes_they_miss(figures):
    array = np.zeros((6, 11, 13), np.int16)
    coronal = figures.SliceView(array, (1.0, 1.0, 3.0), "coronal", 4)
    assert coronal.to_px([0, 4, 5])[1] < coronal.to_px([0, 4, 0])[1]
    assert figures.draw_box(coronal, np.array([[2, 1, 1], [6, 3, 4]]), (255, 0, 0)) is False  # j 1..3, plane j=4
    assert figures.draw_box(coronal, np.array([[2, 1, 1], [6, 5, 4]]), (255, 0, 0), "box") is True
    red = np.all(np.asarray(coronal.image) == (255, 0, 0), axis=-1)
    x0, y_top = coronal.to_px([2, 4, 4])
    assert red[:, int(x0)].any() and red[int(y_top)].any()


def test_dice(figures):
    a = np.zeros((2, 3, 3), bool)
    b = a.copy()
    a[0, :2] = True
    b[0, 1:] = True
    assert figures.dice(a, b) == pytest.approx(2 * 3 / 12)
