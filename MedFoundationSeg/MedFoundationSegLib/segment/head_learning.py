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
import weakref

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
MAX_FIT_CELLS = 20_000  # a fit learns from about this many box cells at most (fit_slices)
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


class CellWindows:
    """The float32 embedding cells around one box, slice by slice: (rows, columns, channels) arrays of the grid window
    ``sh.box_cells`` gives. Why: every click refits the head and predicts every slice of the box; each slice's window
    is converted once per structure, not once per click. An entry is used only while the predictor still holds the
    same embedding tensor (a re-encoded slice is converted again)."""

    def __init__(self, predictor, box_xyxy, grid: int, context: float = sh.BOX_CONTEXT):
        self.predictor = predictor
        self.grid = int(grid)
        self.rows, self.cols = sh.box_cells(box_xyxy, predictor.transform, self.grid, context)
        self._windows: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    @property
    def cells_per_slice(self) -> int:
        return max(1, (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start))

    def window(self, k: int) -> np.ndarray:
        """Slice ``k``'s (rows, columns, channels) float32 cells in the window, C-contiguous."""
        embedding = self.predictor.embedding(k)
        kept = self._windows.get(k)
        if kept is not None and kept[0]() is embedding:
            return kept[1]
        window = np.ascontiguousarray(sh.embedding_cells(embedding[:, :, self.rows, self.cols]))
        self._windows[k] = (weakref.ref(embedding), window)
        return window

    def cell(self, k: int, row: int, col: int) -> np.ndarray:
        """The (channels,) cell at grid (row, col) of slice ``k``, inside the window or not."""
        if self.rows.start <= row < self.rows.stop and self.cols.start <= col < self.cols.stop:
            return self.window(k)[row - self.rows.start, col - self.cols.start]
        return sh.embedding_cells(self.predictor.embedding(k)[:, :, row:row + 1, col:col + 1])[0, 0]

    def keep_only(self, slices) -> None:
        """Forget the slices outside ``slices`` (the box moved or shrank)."""
        wanted = set(slices)
        for k in [k for k in self._windows if k not in wanted]:
            del self._windows[k]


_WINDOWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # predictor -> its CellWindows of the last box


def cell_windows(predictor, box_xyxy, some_slice: int, context: float = sh.BOX_CONTEXT) -> CellWindows:
    """The predictor's cell windows for this box (``some_slice``: any slice of it, whose embedding gives the grid):
    those of the previous call when the box's grid window is the same (the clicks on one structure), else new ones."""
    windows = CellWindows(predictor, box_xyxy, predictor.embedding(some_slice).shape[-1], context)
    kept = _WINDOWS.get(predictor)
    if kept is not None and (kept.rows, kept.cols, kept.grid) == (windows.rows, windows.cols, windows.grid):
        return kept
    _WINDOWS[predictor] = windows
    return windows


def click_cell(srk, transform, cells: int) -> tuple[int, int]:
    """The embedding cell (row, column) under the centre of a clicked voxel (slice, row, column)."""
    h, w = sh.grid_hw(transform, cells)
    return (min(int((srk[1] + 0.5) * h / transform.slice_hw[0]), h - 1),
            min(int((srk[2] + 0.5) * w / transform.slice_hw[1]), w - 1))


def fit_slices(predictor, box_xyxy, slices: range, clicked: set[int], *, context: float = sh.BOX_CONTEXT,
               windows: CellWindows | None = None) -> tuple[list[int], int]:
    """(slices, stride): every clicked slice and every ``stride``-th other one, so that a fit learns from about
    ``MAX_FIT_CELLS`` cells at most. Why: neighbouring slices repeat each other, and the fit's time grows with its
    cells (a liver box of 50 slices holds over 100 000)."""
    windows = windows or cell_windows(predictor, box_xyxy, slices[0], context)
    stride = max(1, int(np.ceil(len(slices) * windows.cells_per_slice / MAX_FIT_CELLS)))
    return [k for k in slices if k in clicked or (k - slices[0]) % stride == 0], stride


def box_samples(predictor, mask_view: np.ndarray, box_xyxy, slices, clicks=(), *, context: float = sh.BOX_CONTEXT,
                windows: CellWindows | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, targets, weights) of the cells around the box on ``slices`` (targets: the share of each cell the
    mask covers; clicked slices weigh ``CLICKED_SLICE_WEIGHT``, the others ``stride``: each stands for that many
    slices) and of every click's cell (weights: ``CLICK_SHARE`` of its class's total)."""
    windows = windows or cell_windows(predictor, box_xyxy, slices[0], context)
    rows, cols = windows.rows, windows.cols
    clicked = {int(c.srk[0]) for c in clicks}
    features, targets, weights = [], [], []
    for k in slices:
        window = windows.window(k)
        share = sh.mask_to_cells(mask_view[k], predictor.transform, windows.grid)[rows, cols].reshape(-1)
        features.append(window.reshape(-1, window.shape[-1]))
        targets.append(share)
        weights.append(np.full(len(share), CLICKED_SLICE_WEIGHT if k in clicked else float(stride), np.float32))
    targets_all, weights_all = np.concatenate(targets), np.concatenate(weights)
    totals = {True: float(weights_all[targets_all > 0.5].sum()), False: float(weights_all[targets_all <= 0.5].sum())}
    for click in clicks:
        features.append(windows.cell(int(click.srk[0]), *click_cell(click.srk, predictor.transform, windows.grid))[None])
        targets.append(np.array([1.0 if click.positive else 0.0], np.float32))
        weights.append(np.array([CLICK_SHARE * max(totals[bool(click.positive)], 1.0)], np.float32))
    return np.concatenate(features), np.concatenate(targets), np.concatenate(weights)


def head_probability(predictor, head: sh.StructureHead, box_xyxy, slices: range, shape_view, *,
                     context: float = sh.BOX_CONTEXT, windows: CellWindows | None = None) -> np.ndarray:
    """The head's probability on ``slices`` within the box grown by ``context`` (0 elsewhere), as a slice view."""
    out = np.zeros(shape_view, np.float32)
    if not len(slices):
        return out
    windows = windows or cell_windows(predictor, box_xyxy, slices[0], context)
    logits = np.full((len(slices), windows.grid, windows.grid), OUTSIDE_LOGIT, np.float32)
    for n, k in enumerate(slices):
        window = windows.window(k)
        logits[n, windows.rows, windows.cols] = head.logits(window.reshape(-1, window.shape[-1])).reshape(
            window.shape[:2])
    out[slices.start:slices.stop] = 1.0 / (1.0 + np.exp(-sh.cell_logits_to_slice(logits, predictor.transform)))
    return out


def learn_in_box(predictor, mask_view: np.ndarray, box_xyxy, slice_range: tuple[int, int], clicks, model: str, *,
                 prior: sh.StructureHead | None = None) -> LearnedHead:
    """Fit the head on what the user sees in the box (and the clicks), then predict the box's slices and every
    clicked slice beyond them. Without clicks this learns from the model's own masks: useful with a ``prior``, whose
    pull keeps the head to what earlier volumes taught where this volume's masks are wrong."""
    ks = [int(c.srk[0]) for c in clicks]
    first, last = min([slice_range[0], *ks]), max([slice_range[1], *ks])
    slices = range(first, last + 1)
    windows = cell_windows(predictor, box_xyxy, first)
    windows.keep_only(slices)
    fitted, stride = fit_slices(predictor, box_xyxy, slices, set(ks), windows=windows)
    features, targets, weights = box_samples(predictor, mask_view, box_xyxy, fitted, clicks, windows=windows,
                                             stride=stride)
    head = sh.fit_head(features, targets, model, weights=weights, prior=prior,
                       prior_weight=PRIOR_WEIGHT_AFTER_CLICKS if clicks else PRIOR_WEIGHT)
    probability = head_probability(predictor, head, box_xyxy, slices, mask_view.shape, windows=windows)
    shown, predicted = np.asarray(mask_view[first:last + 1], bool), probability[first:last + 1] > 0.5
    agreement = 2.0 * float((shown & predicted).sum()) / max(float(shown.sum() + predicted.sum()), 1.0)
    cell_px = predictor.transform.slice_hw[0] / sh.grid_hw(predictor.transform, windows.grid)[0]
    return LearnedHead(head, probability, (first, last), agreement, prior is not None, cell_px)


def head_adds_from(model: str | None) -> float:
    """The registry's ``learning.head_adds_from_agreement`` of ``model``: a head learned in the volume alone that
    reproduces the shown mask less closely (Dice) only takes away (``blend``); ``MIN_AGREEMENT`` without one."""
    from MedFoundationSegLib.core.weights import model_setting

    return float(model_setting(model, "learning", "head_adds_from_agreement", MIN_AGREEMENT))


def blend(probability_view: np.ndarray, learned: LearnedHead, clicks=(), *,
          adds_from: float = MIN_AGREEMENT) -> np.ndarray:
    """The head's probability where it disagrees with the given one over a region at least ``BOUNDARY_CELLS``
    embedding cells wide (a part the model missed, a neighbour it leaked into), the given probability elsewhere: the
    model draws a boundary on the slice's pixels, the head only on its coarser grid. A head learned in this volume
    alone whose agreement is below ``adds_from`` only takes away (``head_adds_from``). Every click's voxel holds its
    label (1 or 0), so a mask taken at 0.5 keeps the clicks."""
    out = np.array(probability_view, np.float32)
    first, last = learned.slices
    given, head = out[first:last + 1], learned.probability[first:last + 1]
    radius = max(1, int(round(BOUNDARY_CELLS * learned.cell_px)))
    differ = (given > 0.5) ^ (head > 0.5)
    wide = np.zeros_like(differ)
    region = _within(differ, radius)
    if region is not None:  # an opening never reaches beyond what it opens: only that region (and a margin) is opened
        wide[region] = open_slices(differ[region], radius)
    if not learned.from_prior and learned.agreement < adds_from:
        wide &= head < given
    out[first:last + 1] = np.where(wide, head, given)
    for click in clicks:
        out[tuple(int(v) for v in click.srk)] = 1.0 if click.positive else 0.0
    return out


def open_slices(mask: np.ndarray, radius: int) -> np.ndarray:
    """Each (row, column) slice of ``mask`` opened with a disk of ``radius`` pixels, outside the array counting as
    background: ``ndimage.binary_opening`` with ``disk(radius)[None]``, by OpenCV, which does it many times faster."""
    import cv2

    cv2.setNumThreads(0)  # as in preprocessing: no OpenCV thread pool beside torch's
    kernel = disk(radius).astype(np.uint8)
    out = np.empty(mask.shape, np.uint8)
    for index, plane in enumerate(np.asarray(mask, np.uint8)):
        out[index] = cv2.morphologyEx(plane, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def _within(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s true voxels (slice, row, column) grown in-plane by ``margin``; None when there
    are none."""
    if not mask.any():
        return None
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return (box[0],) + tuple(slice(max(0, b.start - margin), min(n, b.stop + margin))
                             for b, n in zip(box[1:], mask.shape[1:]))
