"""What the model said behind each segment the engine handed out, so that a later Refine of that segment starts from
the model's probability, not from the bare mask.

Why: the panel sends a segment as a labelmap, which is what the user sees and may have edited by hand since. A
refinement that knows only the mask treats every voxel as equally sure (0.9 inside, 0.1 outside), so its graph cut
opens up where the model was certain, and its clicks lose to the path that keeps the probability
(docs/benchmarks.md, "the panel's path"). The engine keeps, per volume, the last results it returned: a cropped
mask and probability, and the box the result was limited to. A mask sent back is matched with the stored mask it
overlaps most. Where the two agree, the stored probability is used again; where the user changed the mask, the
user's mask wins at the bare mask's confidence. The box is the one the user gave (or the correction grew), grown to
hold what the user painted beyond it and cut back where the user erased the result's ends, instead of one guessed
from the mask.

Nothing here is read from a request: entries are made only from the engine's own results.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

import numpy as np

from MedFoundationSegLib.segment.graphcut import mask_box_kji

# A stored result is used for a sent mask only when their intersection over union reaches this: a segment of
# another structure, or one redrawn by hand, starts from its bare mask.
MIN_OVERLAP = 0.5
# The probability of a voxel the user changed since the engine's result (as a bare mask is read)
EDITED_INSIDE, EDITED_OUTSIDE = 0.9, 0.1
# Below this the model's probability is taken as 0: entries are cropped to where it is not
FLOOR = 0.01


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What is known behind a segment: the model's probability (float32, the volume's shape) and the box (inclusive
    ijk) its refinement keeps to, None when not known."""

    probability_kji: np.ndarray
    box_ijk: np.ndarray | None = None


@dataclasses.dataclass
class _Entry:
    crop: tuple[slice, slice, slice]
    shape: tuple[int, int, int]  # of the crop
    mask_bits: np.ndarray  # np.packbits of the cropped mask
    probability: np.ndarray  # float16, cropped
    box_ijk: np.ndarray | None

    def mask(self) -> np.ndarray:
        count = int(np.prod(self.shape))
        return np.unpackbits(self.mask_bits, count=count).view(bool).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.mask_bits.nbytes + self.probability.nbytes


def _crop_of(mask: np.ndarray, probability: np.ndarray) -> tuple[slice, slice, slice] | None:
    box = mask_box_kji(mask | (probability >= FLOOR))
    return None if box is None else tuple(slice(low, high + 1) for low, high in box)


class EvidenceStore:
    """The last results per volume (keyed by the Session's volume identity), at most ``max_bytes`` in all; safe to
    share between the engine's workers (one per device)."""

    def __init__(self, max_bytes: int = 256 * 1024 ** 2):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._serial = 0
        self._lock = threading.Lock()

    def remember(self, volume_key: str, mask_kji: np.ndarray, probability_kji: np.ndarray | None,
                 box_ijk=None) -> None:
        """Keep a result the engine returns, with the box its refinement kept to; one without a probability (a
        propagation) is not kept."""
        if probability_kji is None:
            return
        mask = np.asarray(mask_kji, bool)
        probability = np.asarray(probability_kji, np.float32)
        crop = _crop_of(mask, probability)
        if crop is None:
            return
        part = mask[crop]
        entry = _Entry(crop, part.shape, np.packbits(part, axis=None), probability[crop].astype(np.float16),
                       None if box_ijk is None else np.array(box_ijk, int).reshape(2, 3))
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._serial += 1
            self._entries[(volume_key, self._serial)] = entry
            while sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def recall(self, volume_key: str, mask_kji: np.ndarray) -> Evidence | None:
        """The evidence behind ``mask_kji``, or None when no stored result of this volume overlaps it by
        ``MIN_OVERLAP``. Its probability is the stored one where the mask is unchanged, the bare mask's 0.9 / 0.1
        where it was changed, and 0 outside the stored crop where the mask is empty; its box is the stored box, cut
        back to the mask's extent where the user erased the stored mask's ends and grown to hold every voxel the user
        added."""
        mask = np.asarray(mask_kji, bool)
        total = int(mask.sum())
        with self._lock:
            entry, best_overlap = None, MIN_OVERLAP
            for key in reversed(self._entries):  # the newest first: it wins a tie
                if key[0] != volume_key:
                    continue
                stored = self._entries[key].mask()
                inter = int((stored & mask[self._entries[key].crop]).sum())
                union = total + int(stored.sum()) - inter
                overlap = inter / union if union else 0.0
                if overlap > best_overlap or (entry is None and overlap >= best_overlap):
                    entry, best_overlap, chosen = self._entries[key], overlap, key
            if entry is None:
                return None
            self._entries.move_to_end(chosen)
        part, stored = mask[entry.crop], entry.mask()
        beyond = total - int(part.sum())  # voxels painted outside the stored crop
        probability = np.zeros(mask.shape, np.float32)
        if beyond:
            probability[mask] = EDITED_INSIDE
        probability[entry.crop] = np.where(part == stored, entry.probability.astype(np.float32),
                                           np.where(part, np.float32(EDITED_INSIDE), np.float32(EDITED_OUTSIDE)))
        if entry.box_ijk is None:
            return Evidence(probability)
        offset_kji = np.array([c.start for c in entry.crop])
        added_ijk = (np.argwhere(part & ~stored) + offset_kji)[:, ::-1]
        sent_ijk = _extent_ijk(part, offset_kji)
        if beyond:
            outside = mask.copy()
            outside[entry.crop] = False
            added_ijk = np.concatenate([added_ijk, np.argwhere(outside)[:, ::-1]])
            sent_ijk = _extent_ijk(mask, np.zeros(3, int))
        box = _box_within_erased(entry.box_ijk, _extent_ijk(stored, offset_kji), sent_ijk)
        return Evidence(probability, _box_holding(box, added_ijk))


def _extent_ijk(mask_kji: np.ndarray, offset_kji: np.ndarray) -> np.ndarray:
    """The inclusive bounding box (ijk) of the true voxels of a non-empty mask placed at ``offset_kji``."""
    return (np.array(mask_box_kji(mask_kji)).T + offset_kji)[:, ::-1]


def _box_within_erased(box_ijk: np.ndarray, stored_ijk: np.ndarray, sent_ijk: np.ndarray) -> np.ndarray:
    """``box_ijk`` cut back to the sent segment's extent on each side where the user erased the stored result's end
    (the segment no longer reaches as far): the refinement is not to bring back what the user took away."""
    low = np.where(sent_ijk[0] > stored_ijk[0], np.maximum(box_ijk[0], sent_ijk[0]), box_ijk[0])
    high = np.where(sent_ijk[1] < stored_ijk[1], np.minimum(box_ijk[1], sent_ijk[1]), box_ijk[1])
    return np.array([low, high])


def _box_holding(box_ijk: np.ndarray, painted_ijk: np.ndarray) -> np.ndarray:
    """``box_ijk`` grown to hold every point of ``painted_ijk`` (what the user added to the segment stays inside the
    refinement's limit)."""
    if not len(painted_ijk):
        return box_ijk.copy()
    return np.array([np.minimum(box_ijk[0], painted_ijk.min(axis=0)), np.maximum(box_ijk[1], painted_ijk.max(axis=0))])
