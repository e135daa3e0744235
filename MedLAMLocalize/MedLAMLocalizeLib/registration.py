"""Registration localizer: no network weights needed.

Each template is registered to the query with SimpleITK (template = fixed image, query = moving image, so the final
transform maps template points straight into the query), multi-resolution, rigid then affine, optionally B-spline.
A structure's extreme points in the query are the extremes of its mapped template surface (or of its 6 points when the
template has no labels); several templates are combined by the per-coordinate median.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.volume import Volume

from .boxes import StructureBox, extreme_points_from_cloud, lps_box_from_extreme_points, make_structure_box
from .preprocess import MRWarning, check_volume_3d, normalise_intensity
from .templates import Template, TemplateSet, split_count

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


from MedFoundationSegLib.progress import Cancelled  # noqa: E402  (shared by CLI, batch and Slicer)


@dataclasses.dataclass
class RegistrationConfig:
    work_spacing_mm: float = 4.0  # images are box-averaged down to about this before registering
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_vox: tuple[float, ...] = (2.0, 1.0, 0.0)
    histogram_bins: int = 32
    sampling_fraction: float = 0.15
    rigid_iterations: int = 100
    affine_iterations: int = 100
    bspline: bool = False
    bspline_mesh_size: int = 4
    bspline_iterations: int = 50
    surface_points: int = 4000  # mapped surface voxels per structure (subsampled)
    seed: int = 2023
    # Global rigid/affine metric: "correlation" (same-modality CT; with the body mask it gave 10-phantom box IoU
    # 0.49 vs Mattes 0.46 global-only), "mattes" (other modalities or contrast phases) or "meansquares".
    metric: str = "correlation"
    # ITK sums the metric over threads in a varying order, which moves results by millimetres run to run; 1 thread is
    # reproducible (0 = ITK's default thread count).
    threads: int = 1
    body_mask_margin_mm: float = 8.0  # >= 0: the global metric only looks inside the template's body grown by this
    # Second, structure-local stage: per structure, a crop of the template around its box (+ margin) is registered to
    # the query with an affine initialised from the global transform (independent subjects differ per organ in size
    # and place, which one global affine cannot follow).
    local: bool = True
    local_margin_mm: float = 20.0  # crop around the structure's box
    local_mask_margin_mm: float = 6.0  # metric only near the structure: its mask (or box ellipsoid) grown by this
    regional_margin_mm: float = 0.0  # > 0: first an unmasked crop this much larger than the box, then the masked one
    local_spacing_mm: float = 2.0
    local_metric: str = "correlation"  # "correlation", "mattes" or "meansquares"
    local_transform: str = "affine"  # "affine" or "similarity" (rotation + isotropic scale + translation)
    local_shrink_factors: tuple[int, ...] = (2, 1)
    local_smoothing_sigmas_vox: tuple[float, ...] = (1.0, 0.0)
    local_wide_start: bool = True  # also fit from one level coarser (organs ~2 cm apart); the better metric wins
    local_sampling_fraction: float = 0.5
    local_iterations: int = 100
    # Before the local affine, an exhaustive search of translations within +-local_search_mm (step local_search_step_mm)
    # on the coarse images: the affine's basin is a few voxels wide, the organs of two subjects can sit 2 cm apart
    # after the global map. 0 turns the search off (off by default: on 3 phantom queries it changed nothing and doubled
    # the time; the coarser local start below does the same job).
    local_search_mm: float = 0.0
    local_search_step_mm: float = 4.0

    def __post_init__(self):
        if self.metric not in ("correlation", "mattes", "meansquares"):
            raise ValueError(f"RegistrationConfig.metric must be 'correlation', 'mattes' or 'meansquares'; "
                             f"got {self.metric!r}")
        if self.local_metric not in ("correlation", "mattes", "meansquares"):
            raise ValueError(f"RegistrationConfig.local_metric must be 'correlation', 'mattes' or 'meansquares'; "
                             f"got {self.local_metric!r}")
        if self.local_transform not in ("affine", "similarity"):
            raise ValueError(f"RegistrationConfig.local_transform must be 'affine' or 'similarity'; "
                             f"got {self.local_transform!r}")
        if len(self.local_shrink_factors) != len(self.local_smoothing_sigmas_vox):
            raise ValueError("RegistrationConfig.local_shrink_factors and local_smoothing_sigmas_vox need the same "
                             "number of levels")
        if self.local_search_mm < 0 or self.local_search_step_mm <= 0:
            raise ValueError("RegistrationConfig: local_search_mm must be >= 0 and local_search_step_mm > 0")
        if self.local_margin_mm < 0 or self.local_mask_margin_mm < 0 or self.local_spacing_mm <= 0:
            raise ValueError("RegistrationConfig: local margins must be >= 0 mm and local_spacing_mm > 0")


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("registration localization cancelled")


def registration_image(volume: Volume, work_spacing_mm: float, modality: str = "auto"):
    """Box-average down (anti-aliased, fast) and map intensities to [0,1] so moments and MI behave."""
    return registration_images(volume, (work_spacing_mm,), modality)[0]


def _shrink_factors(spacing_mm, target_mm: float) -> list[int]:
    return [max(1, int(round(target_mm / s))) for s in spacing_mm]


def registration_images(volume: Volume, spacings_mm: tuple[float, ...], modality: str = "auto") -> list:
    """One [0,1] registration image per target spacing (finest first is cheapest): the full-resolution volume is read
    once, box-averaged in its own integer type (no full-size float copy), and each coarser level is shrunk from the
    finer one, so a CT-sized volume costs one pass."""
    import SimpleITK as sitk

    order = np.argsort(spacings_mm)
    images: list = [None] * len(spacings_mm)
    source, source_spacing = volume.to_sitk(), np.asarray(volume.spacing_mm, float)
    for index in order:
        factors = _shrink_factors(source_spacing, spacings_mm[index])
        if any(f > 1 for f in factors):
            source = sitk.BinShrink(source, factors)
            source_spacing = np.asarray(source.GetSpacing(), float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MRWarning)
            unit, _ = normalise_intensity(sitk.GetArrayViewFromImage(source), modality)
        out = sitk.GetImageFromArray(unit)
        out.CopyInformation(source)
        images[index] = out
    return images


def _new_method(config: RegistrationConfig):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    if config.threads > 0:
        reg.SetNumberOfThreads(config.threads)
    return reg


@contextlib.contextmanager
def itk_threads(count: int):
    """ITK's global default thread count set to ``count`` (> 0) for the block, then restored. The v4 metrics take their
    threads from this default, not from the registration method's own setting."""
    import SimpleITK as sitk

    if count <= 0:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _method(config: RegistrationConfig, iterations: int, fixed, sampling: float | None = None):
    import SimpleITK as sitk

    reg = _new_method(config)
    _set_metric(reg, config.metric, config.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling or config.sampling_fraction, config.seed)
    if config.body_mask_margin_mm >= 0:
        reg.SetMetricFixedMask(body_mask(fixed, config.body_mask_margin_mm))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas_vox))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def body_mask(image_unit, margin_mm: float):
    """Where the patient is on a [0,1] registration image: above about -400 HU, holes (lungs, bowel gas) filled
    slice by slice, grown by ``margin_mm`` so the skin edge stays in; keeps a metric off the air around the body."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image_unit) > 0.15
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(ndimage.binary_opening(array, in_plane), in_plane)
    mask = sitk.GetImageFromArray(filled.astype(np.uint8))
    mask.CopyInformation(image_unit)
    radius = [int(round(margin_mm / s)) for s in image_unit.GetSpacing()]
    return sitk.BinaryDilate(mask, radius) if max(radius) > 0 else mask


def _best_initial_transform(fixed, moving, config: RegistrationConfig):
    """Centre of mass (robust to different scanner origins) or field-of-view centres (robust to a partial field of
    view), whichever the metric prefers on smoothed, shrunk images."""
    import SimpleITK as sitk

    coarse = max(config.shrink_factors)
    small_fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 1.0), [coarse] * 3) if coarse > 1 else fixed
    small_moving = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, 1.0), [coarse] * 3) if coarse > 1 else moving
    best, best_value = None, np.inf
    for mode in (sitk.CenteredTransformInitializerFilter.MOMENTS, sitk.CenteredTransformInitializerFilter.GEOMETRY):
        candidate = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)
        probe = _new_method(config)
        probe.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
        probe.SetMetricSamplingStrategy(probe.NONE)
        probe.SetInterpolator(sitk.sitkLinear)
        probe.SetInitialTransform(candidate, inPlace=False)
        try:
            value = probe.MetricEvaluate(small_fixed, small_moving)
        except RuntimeError:  # no overlap at all
            value = np.inf
        if value < best_value:
            best, best_value = candidate, value
    return best if best is not None else sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)


def register_template(template_image: Volume, query_image: Volume, config: RegistrationConfig | None = None,
                      fixed=None, moving=None, cancelled=None):
    """Transform mapping template LPS points to query LPS points (rigid -> affine [-> B-spline])."""
    import SimpleITK as sitk

    config = config or RegistrationConfig()
    fixed = fixed if fixed is not None else registration_image(template_image, config.work_spacing_mm)
    moving = moving if moving is not None else registration_image(query_image, config.work_spacing_mm)
    levels = len(config.shrink_factors)
    if len(config.smoothing_sigmas_vox) != levels:
        raise ValueError("shrink_factors and smoothing_sigmas_vox need the same number of levels")
    # Avoid shrinking a level below a few voxels on small inputs.
    min_side = min(min(fixed.GetSize()), min(moving.GetSize()))
    config = dataclasses.replace(config, shrink_factors=tuple(max(1, min(f, min_side // 8)) for f in config.shrink_factors))

    initial = _best_initial_transform(fixed, moving, config)
    reg = _method(config, config.rigid_iterations, fixed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                 numberOfIterations=config.rigid_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(initial, inPlace=False)
    rigid = reg.Execute(fixed, moving)
    _check(cancelled)

    affine = sitk.AffineTransform(3)
    affine_rigid = sitk.Euler3DTransform(sitk.CompositeTransform(rigid).GetNthTransform(0)) \
        if isinstance(rigid, sitk.CompositeTransform) else sitk.Euler3DTransform(rigid)
    affine.SetMatrix(affine_rigid.GetMatrix())
    affine.SetTranslation(affine_rigid.GetTranslation())
    affine.SetCenter(affine_rigid.GetCenter())
    reg = _method(config, config.affine_iterations, fixed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=config.affine_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(fixed, moving)
    _check(cancelled)
    if not config.bspline:
        return affine

    mesh = [config.bspline_mesh_size] * 3
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    reg = _method(config, config.bspline_iterations, fixed)
    reg.SetShrinkFactorsPerLevel(list(config.shrink_factors[-2:]))
    reg.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas_vox[-2:]))
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=config.bspline_iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * config.bspline_iterations)
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(bspline)
    return composite


def _set_metric(reg, metric: str, bins: int) -> None:
    if metric == "correlation":
        reg.SetMetricAsCorrelation()
    elif metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    elif metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        raise ValueError(f"unknown registration metric {metric!r}; use 'correlation', 'mattes' or 'meansquares'")


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
    reg = _new_method(config)
    _set_metric(reg, config.local_metric, config.histogram_bins)
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

    reg = _new_method(config)
    _set_metric(reg, config.local_metric, config.histogram_bins)
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


def _similarity(fixed, moving, transform) -> float:
    """Pearson correlation of the registered pair on the template grid: a cheap global quality score."""
    import SimpleITK as sitk

    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    ref = sitk.GetArrayViewFromImage(fixed)
    body = (ref > 0.05) | (warped > 0.05)
    if body.sum() < 10:
        return 0.0
    return float(max(0.0, np.corrcoef(ref[body], warped[body])[0, 1]))


def localize_registration(templates: TemplateSet | list[Template], query: Volume, structures: list[str] | None = None,
                          config: RegistrationConfig | None = None, spl: bool = False, slice_interval: int = 2,
                          progress: Progress | None = None, cancelled: Callable[[], bool] | None = None
                          ) -> dict[str, StructureBox]:
    """Localize ``structures`` in ``query`` by registering every template to it. Same result type as MedLAM."""
    config = config or RegistrationConfig()
    template_set = templates if isinstance(templates, TemplateSet) else TemplateSet(list(templates))
    structures = list(structures or template_set.structures())
    template_set.check(structures)
    check_volume_3d(query, "query")
    report = progress or (lambda f, m: None)
    timings = {}
    start = time.perf_counter()
    if config.local:
        moving, moving_local = registration_images(query, (config.work_spacing_mm, config.local_spacing_mm))
    else:
        moving, moving_local = registration_image(query, config.work_spacing_mm), None
    timings["query_prepare_s"] = time.perf_counter() - start
    split = {s: 1 for s in structures}
    if spl:
        for s in structures:
            split[s] = max(1, min(split_count(t.z_extent_mm(s), slice_interval) for t in template_set.templates))
    per_template_points = {s: [] for s in structures}
    per_template_slabs = {s: [] for s in structures}
    local_info = {s: [] for s in structures}
    scores = []
    n = len(template_set.templates)
    steps = n * (1 + (len(structures) if config.local else 0))
    for index, template in enumerate(template_set.templates):
        _check(cancelled)
        done = index * (1 + (len(structures) if config.local else 0))
        report(done / steps, f"registering template {template.name!r} ({index + 1}/{n})")
        t0 = time.perf_counter()
        if config.local:
            fixed, fixed_local = registration_images(template.image, (config.work_spacing_mm, config.local_spacing_mm))
        else:
            fixed, fixed_local = registration_image(template.image, config.work_spacing_mm), None
        timings[f"template_prepare_{template.name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with itk_threads(config.threads):
            transform = register_template(template.image, query, config, fixed=fixed, moving=moving,
                                          cancelled=cancelled)
        timings[f"register_{template.name}_s"] = time.perf_counter() - t0
        scores.append(_similarity(fixed, moving, transform))
        boxes_kji = label_boxes(template)
        crops = {s: structure_crop(template, s, boxes_kji) for s in structures
                 if template.labels is not None and s in template.label_ids}
        for number, s in enumerate(structures):
            structure_transform = transform
            if config.local:
                _check(cancelled)
                report((done + 1 + number) / steps, f"refining {s!r} around template {template.name!r}")
                t1 = time.perf_counter()
                box = lps_box_from_extreme_points(template.extreme_points(s))
                mask = structure_mask(template, s, fixed_local, config.local_mask_margin_mm, crops.get(s))
                with itk_threads(config.threads):
                    shift = None
                    if config.local_search_mm > 0:
                        shift = search_translation(fixed, moving, transform, box, config,
                                                   structure_mask(template, s, fixed, config.local_mask_margin_mm,
                                                                  crops.get(s)))
                    if config.regional_margin_mm > 0:
                        wide = dataclasses.replace(config, local_margin_mm=config.regional_margin_mm)
                        structure_transform, _ = register_structure(fixed_local, moving_local, transform, box, wide)
                    structure_transform, info = register_structure(fixed_local, moving_local, structure_transform,
                                                                   box, config, fixed_mask=mask, initial_shift_mm=shift)
                    if shift is not None:
                        info["search_shift_mm"] = np.round(shift, 1).tolist()
                info["seconds"] = round(time.perf_counter() - t1, 3)
                local_info[s].append(info)
                timings[f"local_{template.name}_{s}_s"] = time.perf_counter() - t1
            if template.labels is not None and s in template.label_ids:
                offset, part = crops[s]
                cloud = surface_points_lps(template.labels, part, config.surface_points, config.seed, offset)
                per_template_points[s].append(extreme_points_from_cloud(map_points(structure_transform, cloud)))
            else:
                per_template_points[s].append(extreme_points_from_cloud(map_points(structure_transform,
                                                                                   template.extreme_points(s))))
            if spl and split[s] > 1:
                per_template_slabs[s].append([extreme_points_from_cloud(map_points(structure_transform, p))
                                              for p in template.slab_points(s, split[s])])
    report(1.0, "combining templates")
    results = {}
    for s in structures:
        stack = np.stack(per_template_points[s])  # (T, 6, 3)
        points = np.median(stack, axis=0)
        walls = np.stack([np.array([p[0, 0], p[1, 0], p[2, 1], p[3, 1], p[4, 2], p[5, 2]]) for p in stack])
        spread_mm = float(np.median(np.abs(walls - np.median(walls, axis=0)))) if len(stack) > 1 else 0.0
        confidence = float(np.median(scores)) * float(np.exp(-spread_mm / 20.0))
        slabs = None
        if spl and per_template_slabs[s]:
            slabs = list(np.median(np.stack([np.stack(t) for t in per_template_slabs[s]]), axis=0))
        results[s] = make_structure_box(s, points, query, "registration", confidence, slab_points_lps=slabs,
                                        details={"template_similarity": scores, "wall_spread_mm": spread_mm,
                                                 "local_registration": local_info[s],
                                                 "timings_s": {k: round(v, 3) for k, v in timings.items()}})
    return results
