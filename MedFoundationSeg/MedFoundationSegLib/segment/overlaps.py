"""Several structures in one label map: every voxel two structures claim is given to one of them, and counted."""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.segment.propagate import PropagationError


@dataclasses.dataclass
class OverlapReport:
    labels: np.ndarray  # uint8/uint16 label map
    overlaps: dict[tuple[str, str], int]  # (winner, loser) -> voxels given to the winner


def resolve_overlaps(masks: dict[str, np.ndarray], label_values: dict[str, int], *, policy: str = "order",
                     scores: dict[str, np.ndarray | float] | None = None) -> OverlapReport:
    """Merge per-structure masks into one label map, resolving every overlap explicitly and reporting it.

    ``policy="order"``: earlier names in ``masks`` win. ``policy="score"``: the higher score wins per voxel; a score
    is a probability map (same shape) or one number per structure (e.g. mean predicted IoU).
    """
    if policy not in ("order", "score"):
        raise PropagationError(f"policy must be 'order' or 'score'; got {policy!r}")
    names = list(masks)
    if not names:
        raise PropagationError("no structures to merge")
    shape = np.shape(masks[names[0]])
    missing = [n for n in names if n not in label_values]
    if missing:
        raise PropagationError(f"no label value for {missing}")
    if policy == "score" and (scores is None or any(n not in scores for n in names)):
        raise PropagationError("policy 'score' needs a score for every structure")
    dtype = np.uint8 if max(label_values[n] for n in names) < 256 else np.uint16
    labels = np.zeros(shape, dtype)
    best = np.full(shape, -np.inf, np.float32)
    owner = np.full(shape, -1, np.int32)
    overlaps: dict[tuple[str, str], int] = {}
    for index, name in enumerate(names):
        m = np.asarray(masks[name], bool)
        if m.shape != shape:
            raise PropagationError(f"mask {name!r} has shape {m.shape}; expected {shape}")
        if policy == "order":
            score = np.full(shape, -index, np.float32)
        else:
            s = scores[name]
            score = np.broadcast_to(np.asarray(s, np.float32), shape)
        contested = m & (owner >= 0)
        wins = m & (score > best)
        for other_index in np.unique(owner[contested]):
            other = names[other_index]
            here = contested & (owner == other_index)
            won = int((here & wins).sum())
            lost = int(here.sum()) - won
            if won:
                overlaps[(name, other)] = overlaps.get((name, other), 0) + won
            if lost:
                overlaps[(other, name)] = overlaps.get((other, name), 0) + lost
        labels[wins] = label_values[name]
        best[wins] = score[wins]
        owner[wins] = index
    return OverlapReport(labels=labels, overlaps=overlaps)
