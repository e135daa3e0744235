"""Structures that fill most of the field of view, from a phantom: the body outline, the rib cage (a thin bone
shell), and a head-holder-like cradle added behind the body. SAM-family models are known to struggle with large
boxes, with boxes that also hold another object, and with thin shells; these make that measurable."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.volume import Volume

HOLDER_HU = 250.0


def body_mask(image: Volume, air_below_hu: float = -500.0) -> np.ndarray:
    """The body: the largest non-air component, its holes (lungs, bowel gas) filled slice by slice."""
    solid = image.array > air_below_hu
    labels, count = ndimage.label(solid)
    if count == 0:
        return solid
    sizes = ndimage.sum(solid, labels, range(1, count + 1))
    body = labels == 1 + int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(plane) for plane in body])


def rib_mask(image: Volume, spine: np.ndarray, bone_above_hu: float = 400.0) -> np.ndarray:
    """Dense bone inside the body that is not the spine: the rib arcs."""
    return (image.array > bone_above_hu) & ~spine & body_mask(image)


def with_holder(image: Volume, body: np.ndarray, gap_mm: float = 4.0, thickness_mm: float = 8.0) -> tuple[Volume,
                                                                                                           np.ndarray]:
    """A copy of ``image`` with a cradle (a curved plastic shell, ``HOLDER_HU``) behind the body's posterior half,
    ``gap_mm`` of air away from the skin; and the cradle's mask."""
    pixel_mm = float(image.spacing_mm[0])
    inner, outer = max(1, round(gap_mm / pixel_mm)), max(2, round((gap_mm + thickness_mm) / pixel_mm))
    holder = np.zeros_like(body)
    for k, plane in enumerate(body):
        rows = np.flatnonzero(plane.any(axis=1))
        if rows.size == 0:
            continue
        shell = ndimage.binary_dilation(plane, iterations=outer) & ~ndimage.binary_dilation(plane, iterations=inner)
        shell[:int(rows.min() + 0.7 * (rows.max() - rows.min()))] = False  # posterior part only (rows grow posterior)
        holder[k] = shell
    array = image.array.copy()
    array[holder] = HOLDER_HU
    return image.with_array(array), holder
