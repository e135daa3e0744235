"""When a walk from slice to slice stops: the rules (their values in ``stop_rules.yaml``) and the check of one answer
against the previous slice's mask."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.segment import appearance
from MedFoundationSegLib.segment.slice_boxes import mask_box_xyxy


class PropagationError(ValueError):
    """Propagation inputs are unusable."""


@dataclasses.dataclass
class StopRules:
    """When a walk from slice to slice stops; the meaning of each field is in ``stop_rules.yaml``, which also holds
    the preset of each mode (:meth:`preset`). The defaults here are the ``box_guided`` preset."""

    min_area_px: int = 12
    min_area_fraction: float = 0.05
    min_iou: float = 0.5
    max_iou_drop: float | None = None
    max_area_ratio: float = 1.8
    regrowth_below_fraction: float | None = None
    regrowth_ratio: float = 1.2
    max_centroid_shift: float = 0.5
    appearance_sigmas: float = 2.5
    range_tolerance_slices: int = 2

    @classmethod
    def preset(cls, name: str) -> "StopRules":
        """The rules of one mode (``box_guided``, ``seeds``) as stored in ``stop_rules.yaml``."""
        presets = _stop_rule_presets()
        if name not in presets:
            raise PropagationError(f"unknown stop-rule preset {name!r}; choose from {sorted(presets)}")
        return cls(**presets[name])


@functools.lru_cache(maxsize=1)
def _stop_rule_presets() -> dict:
    import yaml

    with open(Path(__file__).with_name("stop_rules.yaml"), encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def stop_reason(m: np.ndarray, iou: float, prev: np.ndarray, max_area: int, rules: StopRules, stats,
                 image_slice, typical_iou: float | None = None) -> str | None:
    """Why the walk should not keep the answer ``m`` after the previous slice's mask ``prev``; None where it may."""
    area = int(m.sum())
    if area < rules.min_area_px:
        return f"empty or tiny mask ({area} px)"
    prev_area = int(prev.sum())
    if area < rules.min_area_fraction * max_area and area < prev_area:
        return f"mask shrank to {area} px (< {rules.min_area_fraction:.0%} of the largest, {max_area} px)"
    if iou < rules.min_iou:
        return f"low predicted IoU {iou:.2f} < {rules.min_iou}"
    if rules.max_iou_drop is not None and typical_iou is not None and iou < typical_iou - rules.max_iou_drop:
        # Beyond a structure's end the previous mask's box still asks "what is here?" and the model answers with
        # a neighbour, less confidently than inside the structure (e.g. a slab above the liver dome).
        return f"predicted IoU fell to {iou:.2f} (median {typical_iou:.2f} on this structure)"
    if prev_area and area / prev_area > rules.max_area_ratio:
        return f"area jumped x{area / prev_area:.2f} (> {rules.max_area_ratio}), likely a leak"
    if (rules.regrowth_below_fraction is not None and prev_area < rules.regrowth_below_fraction * max_area
            and area > rules.regrowth_ratio * prev_area):
        # An organ tapers towards its end; a mask that had shrunk and grows again is a neighbour taking over.
        return (f"mask grew again x{area / prev_area:.2f} after shrinking to {prev_area} px "
                f"(< {rules.regrowth_below_fraction:.0%} of the largest, {max_area} px)")
    box = mask_box_xyxy(prev)
    if box is not None:
        size = max(box[2] - box[0], box[3] - box[1]) + 1
        shift = np.hypot(*(np.array(ndimage.center_of_mass(m)) - np.array(ndimage.center_of_mass(prev))))
        if shift > rules.max_centroid_shift * size:
            return f"centroid jumped {shift:.1f} px (> {rules.max_centroid_shift:.0%} of {size} px)"
    if stats is not None and image_slice is not None:
        mean, std = stats
        value = float(image_slice[m].mean())
        if not appearance.like(value, stats, rules.appearance_sigmas):
            return f"intensity {value:.0f} unlike the seed ({mean:.0f} +- {std:.0f})"
    return None
