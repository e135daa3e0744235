"""The minimum cut over open voxels only (segment/min_cut.py) gives the grid max-flow's answer, and the narrow band the
refinements solve in gives the whole crop's answer on phantom-like problems while opening a fraction of it."""

import dataclasses

import maxflow
import numpy as np
import pytest
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment import graphcut, min_cut
from MedFoundationSegLib.segment.refine import Annotations, GraphCutParams, refine_graphcut
from scipy import ndimage


def grid_reference(cost_fg, cost_bg, weights, fixed_fg, fixed_bg):
    """The same energy on PyMaxflow's full grid, fixed voxels held by prohibitive terminal capacities."""
    hard = 1e6
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(cost_fg.shape)
    for axis, w in enumerate(weights):
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        graph.add_grid_edges(nodes, weights=w, structure=structure, symmetric=True)
    graph.add_grid_tedges(nodes, np.where(fixed_fg, hard, np.where(fixed_bg, 0.0, cost_bg)),
                          np.where(fixed_bg, hard, np.where(fixed_fg, 0.0, cost_fg)))
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)


def random_problem(seed: int, shape):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    cost_fg = (np.exp(-3 * smooth) + rng.uniform(0, 0.3, shape)).astype(np.float32)
    cost_bg = (np.exp(3 * smooth) + rng.uniform(0, 0.3, shape)).astype(np.float32)
    weights = [rng.uniform(0.0, 2.0, shape).astype(np.float32) for _ in range(3)]
    for axis, w in enumerate(weights):
        w[tuple(-1 if a == axis else slice(None) for a in range(3))] = 0
    fixed_fg = rng.uniform(size=shape) < 0.1
    return cost_fg, cost_bg, weights, fixed_fg, (rng.uniform(size=shape) < 0.1) & ~fixed_fg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_over_open_voxels_equals_the_grid_cut(seed):
    cost_fg, cost_bg, weights, fixed_fg, fixed_bg = random_problem(seed, (6, 20, 24))
    labels = min_cut.min_cut_labels(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)
    reference = grid_reference(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)
    assert labels[fixed_fg].all() and not labels[fixed_bg].any()
    assert 0 < labels.sum() < labels.size
    np.testing.assert_array_equal(labels, reference)


def test_a_kept_graph_refilled_for_a_smaller_problem_gives_its_cut():
    min_cut._graphs.kept = None
    min_cut.min_cut_labels(*random_problem(10, (8, 24, 24)))
    kept = min_cut._graphs.kept[0]
    smaller = random_problem(11, (6, 20, 20))
    labels = min_cut.min_cut_labels(*smaller)
    assert min_cut._graphs.kept[0] is kept  # reset and refilled, not rebuilt
    np.testing.assert_array_equal(labels, grid_reference(*smaller))
    larger = random_problem(12, (10, 30, 30))
    np.testing.assert_array_equal(min_cut.min_cut_labels(*larger), grid_reference(*larger))
    assert min_cut._graphs.kept[0] is not kept  # too small for it: a new one


def test_everything_fixed_needs_no_graph():
    fixed_fg = np.zeros((2, 3, 3), bool)
    fixed_fg[0] = True
    costs = np.ones((2, 3, 3), np.float32)
    out = min_cut.min_cut_labels(costs, costs, [costs] * 3, fixed_fg, ~fixed_fg)
    np.testing.assert_array_equal(out, fixed_fg)


@pytest.mark.parametrize("organ,spacing_xyz", [("liver", (1.0, 1.0, 4.0)), ("kidney_left", (1.0, 1.0, 1.0)),
                                               ("pancreas", (0.8, 0.8, 3.0))])
def test_the_band_gives_the_whole_crops_cut(organ, spacing_xyz, monkeypatch):
    phantom = make_phantom(31, (40, 160, 160))
    truth = phantom.mask(organ)
    rng = np.random.default_rng(7)
    shifted = np.roll(ndimage.binary_dilation(truth, iterations=2), 3, axis=2)  # a model mask off by a few voxels
    prob = np.clip(ndimage.gaussian_filter(shifted.astype(np.float32), (0, 1.5, 1.5)) * 0.9 + 0.05
                   + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)
    inside = np.argwhere(truth)
    annotations = Annotations(box_kji=phantom.box_kji(organ), clicks_kji=inside[[len(inside) // 2]],
                              click_positive=np.array([True]))
    opened = []
    band_cut = min_cut.min_cut_labels

    def counting(cost_fg, cost_bg, weights, fixed_fg, fixed_bg):
        opened.append(float(np.mean(~(fixed_fg | fixed_bg))))
        return band_cut(cost_fg, cost_bg, weights, fixed_fg, fixed_bg)

    params = GraphCutParams()
    assert params.band_radius_vox is not None  # the refinements solve in the band by default
    image = phantom.image.array.astype(np.float32)
    whole = refine_graphcut(image, prob, annotations, spacing_mm=spacing_xyz,
                            params=dataclasses.replace(params, band_radius_vox=None))
    monkeypatch.setattr(graphcut.min_cut, "min_cut_labels", counting)
    banded = refine_graphcut(image, prob, annotations, spacing_mm=spacing_xyz, params=params)
    assert whole.mask.sum() > 0.5 * truth.sum()
    np.testing.assert_array_equal(banded.mask, whole.mask)
    assert opened[-1] < 0.6, f"the band opened {opened[-1]:.0%} of the crop"
