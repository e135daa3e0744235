"""Earlier volumes of a structure as atlases: each signed mask kept with its image around the box, registered to the
next volume's image there, so that the shape follows this volume's anatomy and not only the box.

Why: the mean shape in box coordinates (segment/shape_prior.py) puts each earlier mask where the box says; organs of
one dataset differ in how they bend and where they touch their neighbours inside the box. The image around the box
shows where: a deformable registration of each earlier volume's image onto this one (SimpleITK's demons, on the box
grid, where the boxes have already aligned position and scale) carries its mask along, and the mean of the carried
masks, each weighted by how well its registered image matches this one inside the box, is the share of earlier volumes
holding each voxel (the shape's meaning): an atlas of another contrast phase, whose registration followed the wrong
edges, counts for less. The image and mask of the latest ``MAX_ATLASES`` volumes are kept per structure in its stored
head.

Grids are (k, j, i) uint8 arrays on ``GRID_KJI`` spanning the box grown as the shape's grid; boxes are
((i0, j0, k0), (i1, j1, k1)) inclusive voxels.
"""

from __future__ import annotations

import hashlib

import numpy as np
import SimpleITK as sitk

from MedFoundationSegLib.segment import appearance as appearance_rule
from MedFoundationSegLib.segment import shape_prior

GRID_KJI = (24, 64, 64)
MAX_ATLASES = 6  # the latest volumes kept: their registration is the cost of a first segmentation (a few tenths of s)
DEMONS_ITERATIONS = 60
DEMONS_SMOOTHING_NODES = 1.5  # Gaussian smoothing of the displacement field, in grid nodes
HISTOGRAM_LEVELS = 64
WINDOW_PERCENTILES = (1, 99)  # the window of the image around the box: all but its extremes
MATCH_POWER = 8  # an atlas's weight: its registered image's correlation with this one inside the box, to this power
SOURCE_BYTES = 8  # an atlas's source: a digest of its volume's voxels (``volume_digest``)
SOURCE_STRIDE = 4  # the digest reads every this many voxels along each axis


def image_grid(image_kji: np.ndarray, box_ijk) -> np.ndarray:
    """The image around the box on the atlas grid, its ``WINDOW_PERCENTILES`` there mapped to 0-255 (uint8: what a
    registration needs, and small to store and send): CT and MR alike, whatever the scanner's offset."""
    grid = shape_prior.block_mean_grid(image_kji, box_ijk, GRID_KJI)
    low, high = np.percentile(grid, WINDOW_PERCENTILES)
    return _to_uint8((grid - low) / max(float(high - low), 1e-6))


def mask_grid(mask_kji: np.ndarray, box_ijk) -> np.ndarray:
    """The mask's occupancy on the atlas grid, 0-255 for 0-1 (uint8)."""
    return _to_uint8(shape_prior.block_mean_grid(mask_kji, box_ijk, GRID_KJI))


def _to_uint8(share: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(share, 0, 1) * 255).astype(np.uint8)


def volume_digest(image_kji: np.ndarray) -> np.ndarray:
    """``SOURCE_BYTES`` uint8 naming a volume by its voxel values (every ``SOURCE_STRIDE``-th along each axis, as
    float64, with the volume's shape): the same scan learned again, in a later Slicer session or by a second
    ``learn-heads``, is known by it wherever it was loaded from and whatever type the loader gave its voxels."""
    image = np.asarray(image_kji)
    sample = np.ascontiguousarray(image[::SOURCE_STRIDE, ::SOURCE_STRIDE, ::SOURCE_STRIDE], dtype=np.float64)
    digest = hashlib.blake2b(f"{image.shape}".encode(), digest_size=SOURCE_BYTES)
    digest.update(memoryview(sample).cast("B"))
    return np.frombuffer(digest.digest(), np.uint8).copy()


def appearance(image_kji: np.ndarray, mask_kji: np.ndarray) -> np.ndarray:
    """The structure's intensity in its volume's own units, (mean, spread) of the image under the mask as the
    appearance rule measures it (``appearance.of_pixels``, float32): kept with the atlas so that a later volume's walk
    can tell the structure from the tissue beside it (``propagate.box_guided``'s ``learned_appearance``); NaN for an
    empty mask."""
    values = np.asarray(image_kji)[np.asarray(mask_kji, bool)]
    if values.size == 0:
        return np.full(2, np.nan, np.float32)
    return np.array(appearance_rule.of_pixels(values), np.float32)


def appended(atlases: tuple | None, image: np.ndarray, mask: np.ndarray, source: np.ndarray,
             look: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The atlases (images, masks, sources, appearances) with one more volume's grids and ``appearance``
    (``look``): an atlas of the same volume (``source``) is replaced, not kept twice, and the oldest are dropped
    beyond ``MAX_ATLASES``. Atlases stored before sources (appearances) were kept have an unknown source (zeros) and
    an unknown appearance (NaN)."""
    if atlases is None or atlases[0] is None or len(atlases[0]) == 0:
        return image[None], mask[None], source[None], look[None]
    images, masks, sources, looks = atlases
    if sources is None:
        sources = np.zeros((len(images), SOURCE_BYTES), np.uint8)
    if looks is None:
        looks = np.full((len(images), 2), np.nan, np.float32)
    other = ~_of_volume(sources, source)
    return tuple(np.concatenate([kept[other], new[None]])[-MAX_ATLASES:]
                 for kept, new in ((images, image), (masks, mask), (sources, source), (looks, look)))


def holds_source(sources: np.ndarray | None, source: np.ndarray) -> bool:
    """Whether an atlas of the volume ``source`` names is among ``sources``."""
    return sources is not None and bool(_of_volume(sources, source).any())


def _of_volume(sources: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per atlas source (rows of ``sources``), whether it names the volume ``source`` names."""
    return np.all(np.asarray(sources) == source, axis=1)


def carried_shape(images: np.ndarray, masks: np.ndarray, image_kji: np.ndarray, box_ijk,
                  spacing_kji_mm) -> np.ndarray:
    """The weighted mean of the atlases' masks, each carried onto this volume by registering its image to this
    volume's image around ``box_ijk`` (float32 on ``GRID_KJI``)."""
    _, step = shape_prior.grid_frame(box_ijk, GRID_KJI)
    fixed = _itk(image_grid(image_kji, box_ijk), step * np.asarray(spacing_kji_mm, float))
    carried, matches = zip(*(_carry(fixed, atlas_image, atlas_mask) for atlas_image, atlas_mask in zip(images, masks)))
    weights = np.clip(matches, 0, None) ** MATCH_POWER
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(carried), 1 / len(carried))
    return np.clip(np.tensordot(weights, np.asarray(carried), axes=1), 0, 1).astype(np.float32)


def _box_correlation(fixed: np.ndarray, registered: np.ndarray) -> float:
    """Pearson correlation of two grids over the box's own nodes (the grid's middle half along each axis)."""
    inner = tuple(slice(n // 4, n - n // 4) for n in fixed.shape)
    a, b = (np.asarray(g[inner], np.float64).ravel() for g in (fixed, registered))
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else 0.0


def _itk(grid: np.ndarray, spacing_kji_mm) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(grid, np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing_kji_mm[::-1]))
    return image


def _carry(fixed: sitk.Image, atlas_image: np.ndarray, atlas_mask: np.ndarray) -> tuple[np.ndarray, float]:
    """One atlas's mask on the fixed grid, and how well its registered image matches the fixed one, after its image's
    intensities are matched to the fixed image's (another contrast phase or scanner) and registered onto it."""
    moving = _itk(atlas_image, fixed.GetSpacing()[::-1])
    moving = sitk.HistogramMatching(moving, fixed, HISTOGRAM_LEVELS, 7, True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetStandardDeviations(DEMONS_SMOOTHING_NODES)  # ITK smooths the field in grid nodes
    demons.SetSmoothDisplacementField(True)
    field = demons.Execute(fixed, moving)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    registered = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    mask = _itk(atlas_mask, fixed.GetSpacing()[::-1])
    carried = sitk.GetArrayFromImage(sitk.Resample(mask, fixed, transform, sitk.sitkLinear, 0.0)) / 255.0
    return carried, _box_correlation(sitk.GetArrayFromImage(fixed), registered)
