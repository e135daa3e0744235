"""Localization metrics as the MedLAM paper defines them, plus extreme-point distance.

Boxes are (2,3) [[min],[max]] arrays. ``box_iou`` uses "continuous" extents (max - min, no +1), as the reference does;
wall distance is the mean absolute distance of the 6 walls in mm.
"""

from __future__ import annotations

import numpy as np


def box_iou_mm(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """3D IoU of two boxes given in the same (mm or voxel) units; 0 when they do not overlap."""
    a = np.asarray(box_a, float)
    b = np.asarray(box_b, float)
    if a.shape != (2, 3) or b.shape != (2, 3):
        raise ValueError(f"boxes must be (2,3) [[min],[max]]; got {a.shape} and {b.shape}")
    overlap = np.minimum(a[1], b[1]) - np.maximum(a[0], b[0])
    if np.any(overlap < 0):
        return 0.0
    inter = float(np.prod(overlap))
    union = float(np.prod(a[1] - a[0]) + np.prod(b[1] - b[0]) - inter)
    return inter / union if union > 0 else 0.0


def box_iou_voxels(box_a_kji: np.ndarray, box_b_kji: np.ndarray) -> float:
    """The reference's IoU on inclusive voxel boxes (continuous extents, no +1)."""
    return box_iou_mm(box_a_kji, box_b_kji)


def wall_distance_mm(box_pred: np.ndarray, box_true: np.ndarray, spacing: np.ndarray | None = None) -> float:
    """Mean |pred - true| over the 6 walls; ``spacing`` (same axis order) converts voxel boxes to mm."""
    diff = np.abs(np.asarray(box_pred, float) - np.asarray(box_true, float))
    if spacing is not None:
        diff = diff * np.asarray(spacing, float)[None]
    return float(diff.mean())


def extreme_point_distance_mm(points_pred_lps: np.ndarray, points_true_lps: np.ndarray) -> np.ndarray:
    """(6,) Euclidean distances between corresponding extreme points (mm)."""
    return np.linalg.norm(np.asarray(points_pred_lps, float) - np.asarray(points_true_lps, float), axis=1)


def gt_box_from_mask(mask_kji: np.ndarray) -> np.ndarray:
    """Inclusive (2,3) (k,j,i) box of a mask, or a ValueError if it is empty."""
    kji = np.argwhere(mask_kji)
    if len(kji) == 0:
        raise ValueError("mask is empty; no ground-truth box")
    return np.stack([kji.min(0), kji.max(0)])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0
