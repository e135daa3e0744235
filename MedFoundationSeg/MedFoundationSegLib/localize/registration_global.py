"""Registration localizer, global stage: each template registered to the query as a whole (multi-resolution rigid,
then affine, optionally B-spline), with the settings of every stage in ``RegistrationConfig``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.preprocess import MRWarning, normalise_intensity

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


from MedFoundationSegLib.core.progress import Cancelled  # noqa: E402  (shared by CLI, batch and Slicer)


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
    # after the global map. 0 turns the search off (off by default: it doubles the time, and the coarser local start
    # below does the same job; eval_registration_phantoms.py compares them).
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


def check_cancelled(cancelled: Callable[[], bool] | None) -> None:
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


def new_method(config: RegistrationConfig):
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


def stage_method(config: RegistrationConfig, iterations: int, fixed, sampling: float | None = None):
    import SimpleITK as sitk

    reg = new_method(config)
    set_metric(reg, config.metric, config.histogram_bins)
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
        probe = new_method(config)
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
    reg = stage_method(config, config.rigid_iterations, fixed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                 numberOfIterations=config.rigid_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(initial, inPlace=False)
    rigid = reg.Execute(fixed, moving)
    check_cancelled(cancelled)

    affine = sitk.AffineTransform(3)
    affine_rigid = sitk.Euler3DTransform(sitk.CompositeTransform(rigid).GetNthTransform(0)) \
        if isinstance(rigid, sitk.CompositeTransform) else sitk.Euler3DTransform(rigid)
    affine.SetMatrix(affine_rigid.GetMatrix())
    affine.SetTranslation(affine_rigid.GetTranslation())
    affine.SetCenter(affine_rigid.GetCenter())
    reg = stage_method(config, config.affine_iterations, fixed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=config.affine_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(fixed, moving)
    check_cancelled(cancelled)
    if not config.bspline:
        return affine

    mesh = [config.bspline_mesh_size] * 3
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    reg = stage_method(config, config.bspline_iterations, fixed)
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


def set_metric(reg, metric: str, bins: int) -> None:
    if metric == "correlation":
        reg.SetMetricAsCorrelation()
    elif metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    elif metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        raise ValueError(f"unknown registration metric {metric!r}; use 'correlation', 'mattes' or 'meansquares'")
