"""Intensity windows: map a volume's values (HU for CT, arbitrary for MR) to the 0..255 range SAM-family models saw.

A window is chosen once per volume (explicit level/width or min/max, a named preset from window_presets.yaml, or
percentiles of the volume), then applied slice by slice, so every slice of a volume is mapped the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

PRESETS_PATH = Path(__file__).with_name("window_presets.yaml")
# Voxels sampled for percentile windows: percentiles of a strided subsample are stable and cost milliseconds.
PERCENTILE_SAMPLES = 2_000_000
# "auto" treats a volume as CT when it holds air-like values (HU), else as uncalibrated (percentiles).
CT_AIR_HU = -900.0


class WindowError(ValueError):
    """A window specification or the image it is applied to is not usable."""


@dataclasses.dataclass(frozen=True)
class Window:
    """Closed intensity range [low, high] mapped linearly to [0, 255]; values outside are clipped."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise WindowError(f"window bounds must be finite; got [{low}, {high}]")
        if high <= low:
            raise WindowError(f"window needs high > low; got [{low}, {high}] (a width must be positive)")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_level_width(cls, level: float, width: float) -> "Window":
        if not float(width) > 0:
            raise WindowError(f"window width must be positive; got {width}")
        return cls(float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)

    @property
    def level(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def width(self) -> float:
        return self.high - self.low


@lru_cache(maxsize=None)
def load_presets(path: str | Path = PRESETS_PATH) -> dict:
    """The parsed preset file: ``{"default": name, "presets": {name: spec}}``."""
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream)
    if not isinstance(data, dict) or not isinstance(data.get("presets"), dict):
        raise WindowError(f"{path} has no 'presets' mapping")
    return data


def preset_names() -> list[str]:
    return list(load_presets()["presets"])


def check_image(array: np.ndarray, what: str = "image") -> np.ndarray:
    """The array itself if it is a real-valued numeric image without NaN/inf; a clear WindowError otherwise."""
    array = np.asarray(array)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise WindowError(f"{what} must hold integer or floating-point intensities; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise WindowError(f"{what} contains {bad} NaN/infinite value(s); fill or mask them before segmenting")
    return array


def percentile_window(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> Window:
    """Window between two percentiles of the volume (for MR/PET, whose values carry no absolute meaning)."""
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise WindowError(f"percentiles must satisfy 0 <= low < high <= 100; got {low_pct}, {high_pct}")
    flat = check_image(array, "volume").reshape(-1)
    if flat.size == 0:
        raise WindowError("cannot compute a percentile window of an empty volume")
    step = max(1, flat.size // PERCENTILE_SAMPLES)
    low, high = np.percentile(flat[::step].astype(np.float64), [low_pct, high_pct])
    if high <= low:  # constant region: any positive width maps it to one grey level
        high = low + 1.0
    return Window(low, high)


def looks_like_ct(array: np.ndarray) -> bool:
    """Heuristic for 'auto': CT in HU contains air (about -1000) around the body."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // PERCENTILE_SAMPLES)
    return bool(flat.size) and float(np.min(flat[::step])) <= CT_AIR_HU


def _window_from_mapping(spec: Mapping, array: np.ndarray | None, name: str) -> Window:
    keys = set(spec) - {"modality", "title"}
    if keys == {"level", "width"}:
        return Window.from_level_width(spec["level"], spec["width"])
    if keys == {"min", "max"}:
        return Window(spec["min"], spec["max"])
    if keys == {"percentiles"}:
        if array is None:
            raise WindowError(f"window {name} uses percentiles and needs the volume to compute them")
        low_pct, high_pct = spec["percentiles"]
        return percentile_window(array, float(low_pct), float(high_pct))
    raise WindowError(f"window {name} must have exactly {{level, width}}, {{min, max}} or {{percentiles}}; "
                      f"got keys {sorted(keys)}")


def resolve_window(spec, array: np.ndarray | None = None) -> Window:
    """Turn a user's window choice into a Window for this volume.

    spec: a Window; None or "auto" (CT-like volumes get the default CT preset, others 0.5-99.5 percentiles);
    a preset name; a mapping {level, width} | {min, max} | {percentiles: [lo, hi]}; or a (min, max) pair.
    """
    if isinstance(spec, Window):
        return spec
    presets = load_presets()
    if spec is None or spec == "auto":
        if array is None:
            raise WindowError("the automatic window needs the volume")
        name = presets.get("default", "soft_tissue") if looks_like_ct(array) else "mr"
        return _window_from_mapping(presets["presets"][name], array, repr(name))
    if isinstance(spec, str):
        if spec not in presets["presets"]:
            raise WindowError(f"unknown window preset {spec!r}; known: auto, {', '.join(presets['presets'])}")
        return _window_from_mapping(presets["presets"][spec], array, repr(spec))
    if isinstance(spec, Mapping):
        return _window_from_mapping(spec, array, repr(dict(spec)))
    if isinstance(spec, Sequence) and len(spec) == 2:
        return Window(spec[0], spec[1])
    raise WindowError(f"cannot interpret window {spec!r}; use a preset name, 'auto', {{level, width}}, "
                      f"{{min, max}}, {{percentiles: [lo, hi]}} or a (min, max) pair")


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """uint8 image: values mapped linearly from [window.low, window.high] to [0, 255], clipped, rounded."""
    array = check_image(array)
    scaled = (array.astype(np.float32) - np.float32(window.low)) * np.float32(255.0 / window.width)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
