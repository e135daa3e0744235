"""Segmentation metrics for the benchmarks, with the definitions stated (implementations in the field differ).

- Dice: 2|A∩B| / (|A|+|B|); 1.0 when both masks are empty.
- Surfaces: the voxels of a mask that touch the background (6-neighbourhood, inner boundary).
- HD95: 95th percentile of the *pooled symmetric* surface distances in mm (every surface voxel of A to the nearest
  surface voxel of B, and every one of B to A, in one list) — medpy's definition, not PyMIC's max of two directed
  percentiles. NaN when either mask is empty (counted separately in the report).
- ASSD: mean of the same pooled list (mm). NaN when either mask is empty.
- End-slice error: along the slice axis (k), signed, in slices; positive = the prediction overshoots that end,
  negative = it stops short. Both ends are reported; empty prediction -> NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances_mm(pred: np.ndarray, truth: np.ndarray, spacing_kji_mm) -> np.ndarray | None:
    """Pooled symmetric surface distances (mm), computed on the joint bounding box (plus 1 voxel) for speed."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    if not pred.any() or not truth.any():
        return None
    both = np.argwhere(pred | truth)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = np.minimum(both.max(0) + 2, pred.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred, truth = pred[crop], truth[crop]
    surface_pred, surface_truth = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~surface_truth, sampling=spacing_kji_mm)
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing_kji_mm)
    return np.concatenate([to_truth[surface_pred], to_pred[surface_truth]])


def hd95_mm(pred, truth, spacing_kji_mm) -> float:
    distances = surface_distances_mm(pred, truth, spacing_kji_mm)
    return float("nan") if distances is None else float(np.percentile(distances, 95))


def assd_mm(pred, truth, spacing_kji_mm) -> float:
    distances = surface_distances_mm(pred, truth, spacing_kji_mm)
    return float("nan") if distances is None else float(distances.mean())


def end_slice_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(lower end, upper end) signed errors in slices along k; positive = overshoot."""
    pred_k = np.flatnonzero(np.asarray(pred, bool).any(axis=(1, 2)))
    truth_k = np.flatnonzero(np.asarray(truth, bool).any(axis=(1, 2)))
    if len(truth_k) == 0:
        raise ValueError("the ground truth is empty: no end slices")
    if len(pred_k) == 0:
        return float("nan"), float("nan")
    return float(truth_k[0] - pred_k[0]), float(pred_k[-1] - truth_k[-1])


def all_metrics(pred, truth, spacing_xyz_mm) -> dict:
    """Every metric of one structure; ``spacing_xyz_mm`` as Volume.spacing_mm (x, y, z)."""
    spacing_kji = tuple(float(s) for s in np.asarray(spacing_xyz_mm, float)[::-1])
    distances = surface_distances_mm(pred, truth, spacing_kji)
    lower, upper = end_slice_errors(pred, truth)
    return {"dice": dice(pred, truth),
            "hd95_mm": float("nan") if distances is None else float(np.percentile(distances, 95)),
            "assd_mm": float("nan") if distances is None else float(distances.mean()),
            "end_lower": lower, "end_upper": upper, "empty": bool(not np.asarray(pred, bool).any())}
