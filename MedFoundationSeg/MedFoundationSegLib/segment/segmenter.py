"""The SlicePredictor seen as a per-slice segmenter: what propagation and the pipeline call on each slice.

Besides the mask it returns the model's foreground probability on the slice grid, which refinement uses as its
unary term, and the low-resolution logits that can prompt the next slice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.segment.predictor import SlicePredictor
from MedFoundationSegLib.segment.slice_boxes import mask_box_xyxy

FITS_BOX = 0.5  # an answer whose bounding box overlaps the drawn box at least this much is kept as it is


def box_fit(mask2d: np.ndarray, box_xyxy) -> float:
    """Intersection over union of a mask's bounding box and ``box_xyxy`` (inclusive pixels); 0 for an empty mask."""
    own = mask_box_xyxy(np.asarray(mask2d, bool))
    if own is None:
        return 0.0
    x0, y0, x1, y1 = (int(v) for v in box_xyxy)
    inter = max(0, min(own[2], x1) - max(own[0], x0) + 1) * max(0, min(own[3], y1) - max(own[1], y0) + 1)
    area = (own[2] - own[0] + 1) * (own[3] - own[1] + 1) + (x1 - x0 + 1) * (y1 - y0 + 1)
    return float(inter) / float(area - inter)


@dataclasses.dataclass
class SliceResult:
    mask: np.ndarray  # bool (H, W)
    probability: np.ndarray  # float32 (H, W), sigmoid of the logits
    predicted_iou: float
    low_res_logits: np.ndarray  # (256, 256)


class PredictorSegmenter:
    """Adapts a SlicePredictor (one volume, one axis) to ``segment(slice_index, box_xyxy, ...)``."""

    def __init__(self, predictor: SlicePredictor):
        self.predictor = predictor
        self.probabilities: dict[int, np.ndarray] = {}  # slice -> probability of the last mask kept there

    @property
    def num_slices(self) -> int:
        return self.predictor.num_slices

    @property
    def slice_hw(self) -> tuple[int, int]:
        return self.predictor.slice_hw

    def segment_slice(self, slice_index: int, box_xyxy=None, points_xy=None, point_labels=None,
                      mask_prompt=None, box_frame: str = "slice") -> SliceResult:
        mask_input = None
        if mask_prompt is not None:
            mask_prompt = np.asarray(mask_prompt)
            mask_input = mask_prompt if mask_prompt.shape == (256, 256) else self.predictor.mask_to_prompt(mask_prompt)
        prediction = self.predictor.predict(slice_index, boxes=box_xyxy, points=points_xy, point_labels=point_labels,
                                            mask_input=mask_input, with_probability=True, box_frame=box_frame)
        return SliceResult(prediction.masks[0, 0], prediction.probability[0, 0], float(prediction.iou[0, 0]),
                           prediction.low_res_logits[0, 0])

    def segment_fitting_box(self, slice_index: int, box_xyxy, tight_xyxy) -> tuple[np.ndarray, float]:
        """(mask, predicted IoU) of the box prompt on a slice where the structure fills ``tight_xyxy`` edge to edge
        (the slice a user drew the box on): of the model's answer and its three multimask candidates, the one whose
        bounding box overlaps ``tight_xyxy`` most (the answer on a tie). Why: a cautious model's answer can cover a
        part of the box while a candidate reaches its edges. The IoU is the answer's: the multimask IoU head of a
        model fine-tuned without multimask output (LiteMedSAM) was not trained."""
        answer = self.segment_slice(slice_index, box_xyxy)
        masks, probabilities = [answer.mask], [answer.probability]
        if box_fit(answer.mask, tight_xyxy) < FITS_BOX:
            multi = self.predictor.predict(slice_index, boxes=box_xyxy, multimask=True, with_probability=True)
            masks, probabilities = masks + list(multi.masks[0]), probabilities + list(multi.probability[0])
        pick = int(np.argmax([box_fit(mask, tight_xyxy) for mask in masks]))
        # beyond a candidate's mask, the answer's background stands where it is surer (an untrained multimask head's
        # background is near 0.5 across the whole slice)
        self.probabilities[int(slice_index)] = np.where(masks[pick], probabilities[pick],
                                                        np.minimum(probabilities[pick], answer.probability))
        return masks[pick], answer.predicted_iou

    def segment(self, slice_index: int, box_xyxy=None, points_xy=None, point_labels=None, mask_prompt=None,
                box_frame: str = "slice"):
        """The propagation protocol: (mask, predicted IoU)."""
        result = self.segment_slice(slice_index, box_xyxy, points_xy, point_labels, mask_prompt, box_frame)
        self.probabilities[int(slice_index)] = result.probability
        return result.mask, result.predicted_iou

    def probability_volume(self, slices: list[int] | None = None) -> np.ndarray:
        """(num_slices, H, W) probabilities of the slices segmented so far (zeros elsewhere): refinement's unary."""
        volume = np.zeros((self.num_slices,) + tuple(self.slice_hw), np.float32)
        for index, probability in self.probabilities.items():
            if slices is None or index in slices:
                volume[index] = probability
        return volume

    def official_box_from_mask(self, mask_hw: np.ndarray, grow_px: int = 3) -> np.ndarray | None:
        """LiteMedSAM's official 3D inference box from the previous slice's mask, in the input frame: the mask
        resized as the image is (OpenCV INTER_AREA), its bounding box grown by ``grow_px`` and clipped to the frame
        (the right/bottom edge clips at the frame size, as there); None for an empty resized mask."""
        from MedFoundationSegLib.segment.preprocessing import resize_uint8

        transform = self.predictor.transform
        small = resize_uint8(np.asarray(mask_hw, np.uint8), transform.resized_hw, "opencv_area")
        rows, cols = np.nonzero(small > 0)
        if rows.size == 0:
            return None
        size = transform.input_size
        return np.array([max(0, cols.min() - grow_px), max(0, rows.min() - grow_px),
                         min(size, cols.max() + grow_px), min(size, rows.max() + grow_px)], float)
