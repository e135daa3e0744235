"""Checking the prompts a SlicePredictor is given (boxes, clicks, a previous mask), each refused with the reason."""

from __future__ import annotations

import numpy as np
import torch

LOW_RES_SIZE = 256  # the mask decoder's logit grid


class PredictorError(ValueError):
    """The predictor was given an unusable volume, axis, slice index or prompt."""


def as_float_array(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise PredictorError(f"{name} must be numeric; got {value!r}") from error
    if not np.isfinite(array).all():
        raise PredictorError(f"{name} contains NaN or infinite coordinates: {array.tolist()}")
    return array


def check_boxes(boxes, slice_hw: tuple[int, int], axis: str) -> np.ndarray:
    boxes = as_float_array(boxes, "boxes")
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise PredictorError(f"boxes must be (x0, y0, x1, y1) or an (N, 4) array; got shape {boxes.shape}")
    height, width = slice_hw
    for box in boxes:
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            raise PredictorError(f"empty box {box.tolist()}: need x1 > x0 and y1 > y0 (x = column, y = row)")
        if x0 < 0 or y0 < 0 or x1 > width - 1 or y1 > height - 1:
            raise PredictorError(f"box {box.tolist()} lies outside the {axis} slice of {width} columns x "
                                 f"{height} rows (valid x 0..{width - 1}, y 0..{height - 1}); "
                                 f"clip it with clip_box_to_slice if that is intended")
    return boxes

def check_points(points, labels, count: int | None, slice_hw: tuple[int, int],
             axis: str) -> tuple[np.ndarray, np.ndarray]:
    points = as_float_array(points, "points")
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] == 0:
        raise PredictorError(f"points must be (P, 2) or (N, P, 2) (x, y) arrays; got shape {points.shape}")
    if labels is None:
        raise PredictorError("points need point_labels (1 = foreground, 0 = background)")
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[None]
    if labels.shape != points.shape[:2]:
        raise PredictorError(f"point_labels shape {labels.shape} does not match points {points.shape[:2]}")
    if not np.isin(labels, (0, 1)).all():
        raise PredictorError(f"point_labels must be 1 (foreground) or 0 (background); got {np.unique(labels)}")
    height, width = slice_hw
    x, y = points[..., 0], points[..., 1]
    outside = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    if outside.any():
        raise PredictorError(f"point(s) {points[outside].tolist()} lie outside the {axis} slice of {width} "
                             f"columns x {height} rows")
    if count is not None and points.shape[0] not in (1, count):
        raise PredictorError(f"{points.shape[0]} point sets for {count} boxes; give one set per box or one shared")
    if count is not None and points.shape[0] == 1 and count > 1:
        points, labels = np.repeat(points, count, axis=0), np.repeat(labels, count, axis=0)
    return points, labels.astype(np.int64)

def check_mask_input(mask_input, count: int) -> torch.Tensor:
    mask = as_float_array(mask_input, "mask_input").astype(np.float32)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (LOW_RES_SIZE, LOW_RES_SIZE):
        raise PredictorError(f"mask_input must be low-res logits of shape (256, 256) or (N, 1, 256, 256) "
                             f"(a previous prediction's low_res_logits); got {mask.shape}")
    if mask.shape[0] not in (1, count):
        raise PredictorError(f"{mask.shape[0]} mask inputs for {count} prompts")
    if mask.shape[0] == 1 and count > 1:
        mask = np.repeat(mask, count, axis=0)
    return torch.from_numpy(mask)
