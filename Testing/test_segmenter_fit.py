"""The middle slice's mask chosen among the model's answer and its multimask candidates by how well it fills the box."""

from __future__ import annotations

import numpy as np
from MedFoundationSegLib.segment.predictor import SlicePrediction
from MedFoundationSegLib.segment.segmenter import PredictorSegmenter, box_fit


def _rect(shape, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def test_box_fit_is_the_overlap_of_bounding_boxes():
    assert box_fit(_rect((40, 40), 10, 10, 19, 19), (10, 10, 19, 19)) == 1.0
    assert box_fit(_rect((40, 40), 10, 10, 14, 19), (10, 10, 19, 19)) == 0.5  # half the box's width
    assert box_fit(np.zeros((40, 40), bool), (10, 10, 19, 19)) == 0.0
    assert box_fit(_rect((40, 40), 30, 30, 35, 35), (10, 10, 19, 19)) == 0.0


class CandidatePredictor:
    """Answers a box with a small mask; its multimask candidates are a smaller one, one filling the box, one beyond.
    ``candidate_background``: the candidates' probability beyond their masks (near 0.5 for a model whose multimask
    head was not trained, as LiteMedSAM's)."""

    def __init__(self, shape=(40, 40), candidate_background=0.05):
        self.shape, self.calls, self.candidate_background = shape, [], candidate_background

    def predict(self, index, boxes=None, points=None, point_labels=None, mask_input=None, *, multimask=False,
                with_probability=False, box_frame="slice"):
        self.calls.append((index, tuple(boxes), multimask))
        masks = [_rect(self.shape, 13, 13, 16, 16)] if not multimask else [
            _rect(self.shape, 14, 14, 15, 15), _rect(self.shape, 10, 10, 19, 19), _rect(self.shape, 5, 5, 30, 30)]
        masks = np.array(masks)[None]
        iou = np.array([[0.9]] if not multimask else [[0.2, 0.25, 0.3]], np.float32)
        background = self.candidate_background if multimask else 0.05
        return SlicePrediction(masks, iou, np.zeros(masks.shape[:2] + (256, 256), np.float32),
                               np.where(masks, 0.95, background).astype(np.float32))


def test_the_candidate_that_fills_the_drawn_box_is_kept_with_its_probability_and_the_answers_iou():
    predictor = CandidatePredictor()
    segmenter = PredictorSegmenter(predictor)
    mask, iou = segmenter.segment_fitting_box(7, (8, 8, 21, 21), (10, 10, 19, 19))
    assert np.array_equal(mask, _rect((40, 40), 10, 10, 19, 19)) and iou == np.float32(0.9)
    assert np.array_equal(segmenter.probabilities[7] > 0.5, mask)  # refinement's unary is the kept candidate's
    assert [call[2] for call in predictor.calls] == [False, True] and predictor.calls[0][1] == (8, 8, 21, 21)


def test_an_answer_that_fits_the_box_well_enough_is_kept_without_asking_for_candidates():
    predictor = CandidatePredictor()
    segmenter = PredictorSegmenter(predictor)
    mask, _ = segmenter.segment_fitting_box(3, (12, 12, 17, 17), (12, 13, 17, 16))  # fit 16 / 24
    assert np.array_equal(mask, _rect((40, 40), 13, 13, 16, 16)) and [c[2] for c in predictor.calls] == [False]


def test_beyond_the_kept_candidate_the_answers_surer_background_stands():
    """An untrained multimask head (LiteMedSAM's) gives its candidates a background near 0.5 over the whole slice;
    taken as it is, every later graph cut could grow the mask anywhere on that slice."""
    segmenter = PredictorSegmenter(CandidatePredictor(candidate_background=0.45))
    mask, _ = segmenter.segment_fitting_box(7, (8, 8, 21, 21), (10, 10, 19, 19))
    probability = segmenter.probabilities[7]
    assert np.array_equal(probability > 0.5, mask) and np.all(probability[mask] == np.float32(0.95))
    assert float(probability[~mask].max()) == np.float32(0.05)  # the answer's, not the candidate's 0.45
