"""The s-t minimum cut behind the graph-cut refinements, built only over the voxels whose label is open.

A voxel whose label is fixed (a hard seed, the outside of the box, or, with a narrow band, a voxel far from where the
unary labels change) is not a graph node: each of its edges to an open voxel becomes a terminal capacity of that
voxel. Given the fixed labels the cut over the open voxels is exact; the graph shrinks to the uncertain shell of the
structure, which is what keeps a click on a large structure fast.

Arrays are (z, y, x); ``weights[axis][v]`` is the capacity of the edge between ``v`` and its next voxel along
``axis`` (the last plane along each axis is unused).
"""

from __future__ import annotations

import threading

import numpy as np
from scipy import ndimage

# Each thread keeps its last graph and refills it: its buffers (hundreds of MB for a large organ) stay mapped, where a
# fresh graph per call page-faults every page of them in again (on a virtual machine that can cost more than the flow).
# A graph more than KEEP_FACTOR times the size a call needs is replaced by one of that size.
KEEP_FACTOR = 4
HEADROOM = 1.5  # a new graph has room for this many times the call's nodes and edges: the next click's may be more
_graphs = threading.local()


def unary_labels(cost_fg: np.ndarray, cost_bg: np.ndarray, fixed_fg: np.ndarray,
                 fixed_bg: np.ndarray) -> np.ndarray:
    """The labels each voxel would take on its own (cheaper unary; fixed voxels keep theirs)."""
    return ((cost_fg < cost_bg) | fixed_fg) & ~fixed_bg


def open_band(labels: np.ndarray, cost_fg: np.ndarray, cost_bg: np.ndarray, radius_kji,
              weak_cost: float) -> np.ndarray:
    """Voxels whose label the cut may change: within ``radius_kji`` voxels (a box neighbourhood) of a voxel of the
    other unary label, or whose unary costs differ by less than ``weak_cost`` (there smoothing decides, however far
    from the boundary)."""
    size = tuple(2 * int(r) + 1 for r in radius_kji)
    as_bytes = labels.view(np.uint8)
    near = ndimage.maximum_filter(as_bytes, size=size) != ndimage.minimum_filter(as_bytes, size=size)
    return near | (np.abs(cost_fg - cost_bg) < weak_cost)


def min_cut_labels(cost_fg: np.ndarray, cost_bg: np.ndarray, weights: list[np.ndarray], fixed_fg: np.ndarray,
                   fixed_bg: np.ndarray) -> np.ndarray:
    """Foreground labels minimising the unary costs (``cost_fg`` paid by a foreground voxel, ``cost_bg`` by a
    background one) plus ``weights`` over neighbouring voxels labelled differently, with the ``fixed_fg`` and
    ``fixed_bg`` voxels held (PyMaxflow, Boykov-Kolmogorov)."""
    fixed_fg = fixed_fg & ~fixed_bg
    free = ~(fixed_fg | fixed_bg)
    labels = fixed_fg.copy()
    count = int(free.sum())
    if count == 0:
        return labels
    index = np.full(free.shape, -1, np.int64)
    index[free] = np.arange(count)
    # Source side = foreground: the source capacity is what a node pays as background, the sink's as foreground.
    source = cost_bg[free].astype(np.float64)
    sink = cost_fg[free].astype(np.float64)
    pairs_i, pairs_j, capacities = [], [], []
    for axis, w in enumerate(weights):
        if free.shape[axis] < 2:
            continue
        low = tuple(slice(0, -1) if a == axis else slice(None) for a in range(free.ndim))
        high = tuple(slice(1, None) if a == axis else slice(None) for a in range(free.ndim))
        edge = w[low]
        free_low, free_high = free[low], free[high]
        both = free_low & free_high
        pairs_i.append(index[low][both])
        pairs_j.append(index[high][both])
        capacities.append(edge[both])
        # An edge to a fixed voxel: the open voxel pays its weight when it takes the other label. Each open voxel has
        # one neighbour per side and axis, so the indices of one assignment are unique.
        for mine, theirs, side in ((free_low, high, low), (free_high, low, high)):
            for fixed, costs in ((fixed_fg, source), (fixed_bg, sink)):
                held = mine & fixed[theirs]
                costs[index[side][held]] += edge[held]
    i, j, capacity = (np.concatenate(parts) if parts else np.zeros(0) for parts in (pairs_i, pairs_j, capacities))
    graph = _graph(count, len(i))
    nodes = graph.add_nodes(count)
    if len(i):
        capacity = capacity.astype(np.float64)
        graph.add_edges(nodes[i], nodes[j], capacity, capacity)
    graph.add_grid_tedges(nodes, source, sink)
    graph.maxflow()
    labels[free] = ~graph.get_grid_segments(nodes)
    return labels


def _graph(nodes: int, edges: int):
    """An empty graph for this many nodes and edges: this thread's last one reset when it is large enough and not
    far too large, else a new one with ``HEADROOM`` (and kept)."""
    import maxflow

    kept = getattr(_graphs, "kept", None)
    if kept is not None:
        graph, (max_nodes, max_edges) = kept
        if nodes <= max_nodes <= KEEP_FACTOR * max(nodes, 1) and edges <= max_edges <= KEEP_FACTOR * max(edges, 1):
            graph.reset()
            return graph
    _graphs.kept = None  # free the old buffers before the new ones are taken
    size = (int(HEADROOM * nodes) + 1, int(HEADROOM * edges) + 1)
    graph = maxflow.Graph[float](*size)
    _graphs.kept = (graph, size)
    return graph
