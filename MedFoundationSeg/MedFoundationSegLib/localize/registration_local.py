"""Registration localizer, structure-local stage: per structure, a crop of the template around its box is
registered to the query from the global transform, and its surface is mapped into the query."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.boxes import (
    lps_box_from_extreme_points,
)
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.registration_global import RegistrationConfig, new_method, set_metric
from MedFoundationSegLib.localize.templates import Template

log = logging.getLogger(__name__)

def crop_around_box(image, box_lps: np.ndarray, margin_mm: float):
    """The part of a SimpleITK image covering an LPS box grown by ``margin_mm`` (clipped to the image), or None."""
    import SimpleITK as sitk

    lo, hi = np.asarray(box_lps, float) + np.array([[-margin_mm], [margin_mm]])
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    start = np.clip(np.floor(index.min(0)).astype(int), 0, np.array(image.GetSize()) - 1)
    stop = np.clip(np.ceil(index.max(0)).astype(int), 0, np.array(image.GetSize()) - 1)
    size = stop - start + 1
    if np.any(size < 4):
        return None
    return sitk.RegionOfInterest(image, size.tolist(), start.tolist())


def structure_crop(template: Template, structure: str, label_boxes: list | None = None):
    """(offset_kji, mask) of one labelled structure cropped to its bounding box + 1 voxel. ``label_boxes`` (from
    ``ndimage.find_objects`` over the label map, one pass for all structures) avoids full-size passes per structure:
    on a CT-sized template those dominate the local stage."""
    array = template.labels.array
    value = template.label_ids[structure]
    if label_boxes is None:
        label_boxes = ndimage.find_objects((array == value).astype(np.uint8))
        value = 1
    box = label_boxes[value - 1] if value - 1 < len(label_boxes) else None
    if box is None:
        raise ValueError(f"template {template.name!r}: structure {structure!r} (label {value}) is empty")
    box = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, array.shape))
    return np.array([b.start for b in box]), array[box] == template.label_ids[structure]


def label_boxes(template: Template) -> list | None:
    """Bounding boxes of every label value of a template (one pass), or None without labels."""
    if template.labels is None:
        return None
    array = template.labels.array
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        array = np.clip(np.rint(array), 0, None).astype(np.int32)
    return ndimage.find_objects(array)


def cropped_mask_image(volume: Volume, mask_kji: np.ndarray, offset_kji=(0, 0, 0)):
    """A 0/1 float SimpleITK image of a mask crop whose first voxel is ``offset_kji`` of the volume's grid."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(mask_kji, np.float32))
    image.SetSpacing(tuple(float(v) for v in volume.spacing_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction).ravel()))
    image.SetOrigin(tuple(float(v) for v in volume.lps_from_ijk(np.asarray(offset_kji, float)[None, ::-1])[0]))
    return image


def structure_mask(template: Template, structure: str, reference, margin_mm: float, crop=None):
    """Where the local metric looks, on the ``reference`` grid: the template's label mask when it has one, else the
    ellipsoid inscribed in the box of its 6 points (closer to an organ than the box corners); grown by ``margin_mm``."""
    import SimpleITK as sitk

    spacing = np.array(reference.GetSpacing())
    if template.labels is not None and structure in template.label_ids:
        offset, part = crop if crop is not None else structure_crop(template, structure)
        labels = cropped_mask_image(template.labels, part, offset)
        # Linear resampling of the 0/1 mask then a low threshold keeps thin parts on a coarser grid.
        fraction = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        mask = sitk.Cast(fraction > 0.25, sitk.sitkUInt8)
    else:
        box = lps_box_from_extreme_points(template.extreme_points(structure))
        size = np.array(reference.GetSize())
        index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
        direction = np.array(reference.GetDirection()).reshape(3, 3)
        lps = index * spacing @ direction.T + np.array(reference.GetOrigin())
        semi = np.maximum((box[1] - box[0]) / 2, spacing)
        inside = (((lps - box.mean(axis=0)) / semi) ** 2).sum(axis=1) <= 1.0
        mask = sitk.GetImageFromArray(inside.reshape(size).transpose(2, 1, 0).astype(np.uint8))
        mask.CopyInformation(reference)
    radius = [int(round(margin_mm / s)) for s in spacing]
    return sitk.BinaryDilate(mask, radius) if max(radius) > 0 else mask


def search_translation(fixed, moving, global_transform, box_lps: np.ndarray, config: RegistrationConfig,
                       fixed_mask=None):
    """Best translation (LPS mm, applied in template space before the global map) of the structure's crop on a grid of
    +-``local_search_mm``: the masked metric evaluated everywhere (ITK's exhaustive optimizer), no gradient needed."""
    import SimpleITK as sitk

    crop = crop_around_box(fixed, box_lps, config.local_margin_mm)
    steps = int(round(config.local_search_mm / config.local_search_step_mm))
    if crop is None or steps < 1:
        return np.zeros(3)
    shift = sitk.TranslationTransform(3)
    reg = new_method(config)
    set_metric(reg, config.local_metric, config.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetSmoothingSigmasPerLevel([1.0])
    reg.SetShrinkFactorsPerLevel([1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetOptimizerAsExhaustive([steps] * 3, stepLength=config.local_search_step_mm)
    reg.SetOptimizerScales([1.0, 1.0, 1.0])
    reg.SetMovingInitialTransform(global_transform)
    reg.SetInitialTransform(shift, inPlace=True)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Resample(fixed_mask, crop, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    try:
        reg.Execute(crop, moving)
    except RuntimeError:  # the crop left the query at every offset
        return np.zeros(3)
    return np.array(shift.GetOffset(), float)


def _local_transform(config: RegistrationConfig, centre, shift_mm):
    import SimpleITK as sitk

    if config.local_transform == "affine":
        local = sitk.AffineTransform(3)
    elif config.local_transform == "similarity":
        local = sitk.Similarity3DTransform()
    else:
        raise ValueError(f"unknown local_transform {config.local_transform!r}; use 'affine' or 'similarity'")
    local.SetCenter(centre)
    if shift_mm is not None:
        local.SetTranslation(tuple(float(v) for v in shift_mm))
    return local


def _fit_local(crop, moving_local, global_transform, local, shrink, sigmas, mask, config: RegistrationConfig):
    """One masked local registration (``local`` optimised in place); (metric before, metric after) on the full crop."""
    import SimpleITK as sitk

    reg = new_method(config)
    set_metric(reg, config.local_metric, config.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(config.local_sampling_fraction, config.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=config.local_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetMovingInitialTransform(global_transform)
    reg.SetInitialTransform(local, inPlace=True)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    before = reg.MetricEvaluate(crop, moving_local)
    reg.Execute(crop, moving_local)
    return float(before), float(reg.MetricEvaluate(crop, moving_local))


def register_structure(fixed_local, moving_local, global_transform, box_lps: np.ndarray,
                       config: RegistrationConfig, fixed_mask=None, initial_shift_mm=None):
    """Refine ``global_transform`` around one template structure: a crop of the template (box + margin) is matched to
    the query by an affine (or similarity) about the box centre, composed after the global map.

    With ``local_wide_start`` a second fit starts one pyramid level coarser (wider basin, but on small or faint
    organs it can settle on a shrunken fit); the fit with the better final metric on the full crop wins.
    Returns (transform, info); the global transform is kept when the crop is unusable or the metric got no better.
    """
    import SimpleITK as sitk

    info = {"local": False}
    crop = crop_around_box(fixed_local, box_lps, config.local_margin_mm)
    if crop is None:
        info["reason"] = "structure box too small or outside the template"
        return global_transform, info
    centre = tuple(float(c) for c in np.asarray(box_lps, float).mean(axis=0))
    if len(config.local_smoothing_sigmas_vox) != len(config.local_shrink_factors):
        raise ValueError("local_shrink_factors and local_smoothing_sigmas_vox need the same number of levels")
    min_side = min(crop.GetSize())
    schedules = [(config.local_shrink_factors, config.local_smoothing_sigmas_vox)]
    if config.local_wide_start:
        schedules.append(((2 * config.local_shrink_factors[0], *config.local_shrink_factors),
                          (max(1.0, 2 * config.local_smoothing_sigmas_vox[0]), *config.local_smoothing_sigmas_vox)))
    mask = None if fixed_mask is None else sitk.Resample(fixed_mask, crop, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    best = None
    for number, (shrink, sigmas) in enumerate(schedules):
        local = _local_transform(config, centre, initial_shift_mm)
        shrink = [max(1, min(f, min_side // 6)) for f in shrink]
        try:
            before, after = _fit_local(crop, moving_local, global_transform, local, shrink, sigmas, mask, config)
        except RuntimeError as error:  # e.g. the crop maps outside the query
            info["reason"] = f"local registration failed: {str(error).splitlines()[-1][:120]}"
            continue
        if best is None or after < best[2]:
            best = (local, before, after, number)
    if best is None:
        return global_transform, info
    local, before, after, number = best
    info.update(metric_before=before, metric_after=after, schedule=number)
    info.pop("reason", None)
    scales = np.linalg.svd(np.array(local.GetMatrix()).reshape(3, 3), compute_uv=False)
    info["local_scales"] = np.round(scales, 3).tolist()  # no limit: a cap at 1.5x cost the spleen (sizes vary so)
    if not after < before:
        info["reason"] = "local registration did not improve the metric"
        return global_transform, info
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(global_transform)
    composite.AddTransform(local)  # applied first: template point -> locally corrected -> global map to the query
    info["local"] = True
    return composite, info


def map_points(transform, points_lps: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(float(c) for c in p)) for p in np.atleast_2d(points_lps)])


def surface_points_lps(volume: Volume, mask_kji: np.ndarray, limit: int, seed: int, offset_kji=(0, 0, 0)
                       ) -> np.ndarray:
    """Boundary voxel centres of a mask (LPS), subsampled to ``limit``; the extremes are always kept."""
    mask = np.asarray(mask_kji, bool)
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found:
        raise ValueError("the structure's mask is empty; it has no surface")
    box = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(found[0], mask.shape))
    part = mask[box]  # erode only around the structure (a CT-sized grid is mostly elsewhere)
    kji = np.argwhere(part & ~ndimage.binary_erosion(part)) + np.array([b.start for b in box]) + np.asarray(offset_kji)
    if len(kji) > limit:
        keep = np.random.default_rng(seed).choice(len(kji), limit, replace=False)
        extremes = [np.argmin(kji[:, a]) for a in range(3)] + [np.argmax(kji[:, a]) for a in range(3)]
        kji = kji[np.union1d(keep, extremes)]
    return volume.lps_from_ijk(kji[:, ::-1].astype(float))


def similarity(fixed, moving, transform) -> float:
    """Pearson correlation of the registered pair on the template grid: a cheap global quality score."""
    import SimpleITK as sitk

    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    ref = sitk.GetArrayViewFromImage(fixed)
    body = (ref > 0.05) | (warped > 0.05)
    if body.sum() < 10:
        return 0.0
    return float(max(0.0, np.corrcoef(ref[body], warped[body])[0, 1]))
