"""Learning from the user within a volume: the structure head refitted after every correction.

Why: a click corrects one slice, but the error it points at (vessels the model leaves out of an organ, a neighbour it
leaks into) recurs on the slices nobody clicked. The head (segment/structure_head.py) is fitted on the mask the user
sees in the box, the clicked slices weighing more, and on every click's embedding cell as a labelled sample; it then
predicts every slice of the box, so tissue the user included (or excluded) once is included (excluded) wherever it
looks the same. With a head from earlier volumes as prior, the fit starts from what the dataset taught.

Arrays are slice views (slice, row, column) along the model's axis; boxes are (x0, y0, x1, y1) inclusive pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from MedFoundationSegLib.segment import structure_head as sh

CLICKED_SLICE_WEIGHT = 3.0  # a slice the user clicked on counts this many times an unvisited one
CLICK_SHARE = 0.05  # each click's cell weighs this share of its class's total weight
OUTSIDE_LOGIT = -10.0  # the head says "background" beyond the cells it predicts
MIN_AGREEMENT = 0.8  # a head whose mask agrees less (Dice) with the mask it learned from cannot resolve the structure
# How hard a head from earlier volumes holds, per volume it learned from (fit_head's prior_weight): firmly on a first
# segmentation (it overrules the model's masks where they are wrong), lightly once the user clicked (the clicks and the
# corrected slices are this volume's own evidence and must move it).
PRIOR_WEIGHT = 10.0
PRIOR_WEIGHT_AFTER_CLICKS = 1.0
MAX_FIT_CELLS = 40_000  # a fit learns from about this many box cells at most (fit_slices)
BOUNDARY_CELLS = 1.0  # disagreements narrower than this many embedding cells keep the model's boundary (see blend)


@dataclasses.dataclass
class LearnedHead:
    head: sh.StructureHead
    probability: np.ndarray  # float32 slice view: the head's probability on ``slices``, 0 elsewhere
    slices: tuple[int, int]  # first, last slice predicted
    agreement: float  # Dice between the head's mask and the mask it learned from, on ``slices``
    from_prior: bool = False  # warm-started from a head that earlier volumes' signed masks taught
    cell_px: float = 1.0  # slice pixels per embedding cell

    @property
    def usable(self) -> bool:
        """A head learned from this volume alone must reproduce the mask it was shown: where the embedding grid is
        coarse for the structure (small, thin, low-contrast ones) it cannot, and its prediction would replace a fair
        mask with a blur. A head from earlier volumes is used as it is: it disagrees with the model exactly where the
        model is wrong (and only heads that passed this test on their signed masks are stored)."""
        return self.from_prior or self.agreement >= MIN_AGREEMENT


def _cells_of(predictor, k: int, box_xyxy, context: float, cache: dict | None = None):
    """(cells, rows, cols): the (L, L, C) embedding cells of slice ``k`` and the grid window around the box; kept in
    ``cache`` (slice -> cells) when given, so a fit and its prediction convert each embedding once."""
    cells = None if cache is None else cache.get(k)
    if cells is None:
        cells = sh.embedding_cells(predictor.embedding(k))
        if cache is not None:
            cache[k] = cells
    rows, cols = sh.box_cells(box_xyxy, predictor.transform, cells.shape[0], context)
    return cells, rows, cols


def click_cell(srk, transform, cells: int) -> tuple[int, int]:
    """The embedding cell (row, column) under the centre of a clicked voxel (slice, row, column)."""
    h, w = sh.grid_hw(transform, cells)
    return (min(int((srk[1] + 0.5) * h / transform.slice_hw[0]), h - 1),
            min(int((srk[2] + 0.5) * w / transform.slice_hw[1]), w - 1))


def fit_slices(predictor, box_xyxy, slices: range, clicked: set[int], *, context: float = sh.BOX_CONTEXT,
               cache: dict | None = None) -> tuple[list[int], int]:
    """(slices, stride): every clicked slice and every ``stride``-th other one, so that a fit learns from about
    ``MAX_FIT_CELLS`` cells at most. Why: neighbouring slices repeat each other, and the fit's time grows with its
    cells (a liver box of 50 slices holds over 100 000)."""
    _, rows, cols = _cells_of(predictor, slices[0], box_xyxy, context, cache)
    per_slice = max(1, (rows.stop - rows.start) * (cols.stop - cols.start))
    stride = max(1, int(np.ceil(len(slices) * per_slice / MAX_FIT_CELLS)))
    return [k for k in slices if k in clicked or (k - slices[0]) % stride == 0], stride


def box_samples(predictor, mask_view: np.ndarray, box_xyxy, slices, clicks=(), *, context: float = sh.BOX_CONTEXT,
                cache: dict | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, targets, weights) of the cells around the box on ``slices`` (targets: the share of each cell the
    mask covers; clicked slices weigh ``CLICKED_SLICE_WEIGHT``, the others ``stride``: each stands for that many
    slices) and of every click's cell (weights: ``CLICK_SHARE`` of its class's total)."""
    clicked = {int(c.srk[0]) for c in clicks}
    features, targets, weights = [], [], []
    for k in slices:
        cells, rows, cols = _cells_of(predictor, k, box_xyxy, context, cache)
        share = sh.mask_to_cells(mask_view[k], predictor.transform, cells.shape[0])[rows, cols].reshape(-1)
        features.append(cells[rows, cols].reshape(-1, cells.shape[-1]))
        targets.append(share)
        weights.append(np.full(len(share), CLICKED_SLICE_WEIGHT if k in clicked else float(stride), np.float32))
    targets_all, weights_all = np.concatenate(targets), np.concatenate(weights)
    totals = {True: float(weights_all[targets_all > 0.5].sum()), False: float(weights_all[targets_all <= 0.5].sum())}
    for click in clicks:
        cells = _cells_of(predictor, int(click.srk[0]), box_xyxy, context, cache)[0]
        row, col = click_cell(click.srk, predictor.transform, cells.shape[0])
        features.append(cells[row, col][None])
        targets.append(np.array([1.0 if click.positive else 0.0], np.float32))
        weights.append(np.array([CLICK_SHARE * max(totals[bool(click.positive)], 1.0)], np.float32))
    return np.concatenate(features), np.concatenate(targets), np.concatenate(weights)


def head_probability(predictor, head: sh.StructureHead, box_xyxy, slices: range, shape_view, *,
                     context: float = sh.BOX_CONTEXT, cache: dict | None = None) -> np.ndarray:
    """The head's probability on ``slices`` within the box grown by ``context`` (0 elsewhere), as a slice view."""
    out = np.zeros(shape_view, np.float32)
    logits = []
    for k in slices:
        cells, rows, cols = _cells_of(predictor, k, box_xyxy, context, cache)
        grid = np.full(cells.shape[:2], OUTSIDE_LOGIT, np.float32)
        window = cells[rows, cols]
        grid[rows, cols] = head.logits(window.reshape(-1, window.shape[-1])).reshape(window.shape[:2])
        logits.append(grid)
    if logits:
        out[slices.start:slices.stop] = 1.0 / (1.0 + np.exp(-sh.cell_logits_to_slice(np.stack(logits),
                                                                                     predictor.transform)))
    return out


def learn_in_box(predictor, mask_view: np.ndarray, box_xyxy, slice_range: tuple[int, int], clicks, model: str, *,
                 prior: sh.StructureHead | None = None) -> LearnedHead:
    """Fit the head on what the user sees in the box (and the clicks), then predict the box's slices and every
    clicked slice beyond them. Without clicks this learns from the model's own masks: useful with a ``prior``, whose
    pull keeps the head to what earlier volumes taught where this volume's masks are wrong."""
    ks = [int(c.srk[0]) for c in clicks]
    first, last = min([slice_range[0], *ks]), max([slice_range[1], *ks])
    slices = range(first, last + 1)
    cache: dict = {}
    fitted, stride = fit_slices(predictor, box_xyxy, slices, set(ks), cache=cache)
    features, targets, weights = box_samples(predictor, mask_view, box_xyxy, fitted, clicks, cache=cache,
                                             stride=stride)
    head = sh.fit_head(features, targets, model, weights=weights, prior=prior,
                       prior_weight=PRIOR_WEIGHT_AFTER_CLICKS if clicks else PRIOR_WEIGHT)
    probability = head_probability(predictor, head, box_xyxy, slices, mask_view.shape, cache=cache)
    shown, predicted = np.asarray(mask_view[first:last + 1], bool), probability[first:last + 1] > 0.5
    agreement = 2.0 * float((shown & predicted).sum()) / max(float(shown.sum() + predicted.sum()), 1.0)
    cell_px = predictor.transform.slice_hw[0] / sh.grid_hw(predictor.transform, cache[first].shape[0])[0]
    return LearnedHead(head, probability, (first, last), agreement, prior is not None, cell_px)


def blend(probability_view: np.ndarray, learned: LearnedHead, clicks=()) -> np.ndarray:
    """The head's probability where it disagrees with the given one over a region at least ``BOUNDARY_CELLS``
    embedding cells wide (a part the model missed, a neighbour it leaked into), the given probability elsewhere: the
    model draws a boundary on the slice's pixels, the head only on its coarser grid. Every click's voxel holds its
    label (1 or 0), so a mask taken at 0.5 keeps the clicks."""
    out = np.array(probability_view, np.float32)
    first, last = learned.slices
    given, head = out[first:last + 1], learned.probability[first:last + 1]
    radius = max(1, int(round(BOUNDARY_CELLS * learned.cell_px)))
    wide = ndimage.binary_opening((given > 0.5) ^ (head > 0.5), structure=disk(radius)[None].astype(bool))
    out[first:last + 1] = np.where(wide, head, given)
    for click in clicks:
        out[tuple(int(v) for v in click.srk)] = 1.0 if click.positive else 0.0
    return out
