"""Two models' answers for one box as one mask: kept where they agree, decided by the image where they do not.

Why: LiteMedSAM and MobileSAM fail differently (LiteMedSAM under-segments large or low-contrast structures, MobileSAM
leaks into neighbours or takes the background of a large box). Averaging their probabilities lets a confident wrong
model win; instead every voxel both models call foreground (or background) is fixed, and a graph cut with the mean
probability as evidence and the image's edges as the pairwise term settles only the voxels in dispute.

Arrays are (z, y, x); the box is the inclusive ((k0, k1), (j0, j1), (i0, i1)) voxel range; spacing is (x, y, z) mm.
"""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.segment import refine
from MedFoundationSegLib.segment.graphcut import BoxKJI


def fuse_by_agreement(image_kji: np.ndarray, probabilities_kji: list[np.ndarray], box_kji: BoxKJI, *,
                      spacing_mm=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """(mask, mean probability) from two or more models' probability maps of the same structure and box."""
    if len(probabilities_kji) < 2:
        raise ValueError("model fusion needs the probability maps of at least two models")
    stack = np.stack([np.asarray(p, np.float32) for p in probabilities_kji])
    if stack.shape[1:] != image_kji.shape:
        raise ValueError(f"probability maps {stack.shape[1:]} do not match the image {image_kji.shape}")
    votes = stack > 0.5
    all_fg, all_bg = votes.all(axis=0), ~votes.any(axis=0)
    mean = stack.mean(axis=0)
    if not all_fg.any():  # nothing both call foreground: no anchor for the cut, take the mean's answer
        return mean > 0.5, mean
    annotations = refine.Annotations(box_kji=box_kji, fg_scribble=all_fg, bg_scribble=all_bg)
    cut = refine.refine(image_kji.astype(np.float32), mean, annotations, method="graphcut", spacing_mm=spacing_mm)
    return np.asarray(cut.mask, bool), mean
