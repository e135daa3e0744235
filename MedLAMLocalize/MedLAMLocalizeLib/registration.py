"""Registration localizer: no network weights needed.

Each template is registered to the query with SimpleITK (template = fixed image, query = moving image, so the final
transform maps template points straight into the query), multi-resolution, rigid then affine, optionally B-spline.
A structure's extreme points in the query are the extremes of its mapped template surface (or of its 6 points when the
template has no labels); several templates are combined by the per-coordinate median.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.volume import Volume

from .boxes import StructureBox, extreme_points_from_cloud, make_structure_box
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


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("registration localization cancelled")


def registration_image(volume: Volume, work_spacing_mm: float, modality: str = "auto"):
    """Box-average down (anti-aliased, fast) and map intensities to [0,1] so moments and MI behave."""
    import SimpleITK as sitk

    factors = [max(1, int(round(work_spacing_mm / s))) for s in volume.spacing_mm]
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MRWarning)
        unit, _ = normalise_intensity(sitk.GetArrayViewFromImage(image), modality)
    out = sitk.GetImageFromArray(unit)
    out.CopyInformation(image)
    return out


def _method(config: RegistrationConfig, iterations: int, fixed, sampling: float | None = None):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling or config.sampling_fraction, config.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas_vox))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


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
        probe = sitk.ImageRegistrationMethod()
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


def map_points(transform, points_lps: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(float(c) for c in p)) for p in np.atleast_2d(points_lps)])


def surface_points_lps(volume: Volume, mask_kji: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Boundary voxel centres of a mask (LPS), subsampled to ``limit``; the extremes are always kept."""
    mask = np.asarray(mask_kji, bool)
    boundary = mask & ~ndimage.binary_erosion(mask)
    kji = np.argwhere(boundary)
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
    moving = registration_image(query, config.work_spacing_mm)
    timings["query_prepare_s"] = time.perf_counter() - start
    split = {s: 1 for s in structures}
    if spl:
        for s in structures:
            split[s] = max(1, min(split_count(t.z_extent_mm(s), slice_interval) for t in template_set.templates))
    per_template_points = {s: [] for s in structures}
    per_template_slabs = {s: [] for s in structures}
    scores = []
    n = len(template_set.templates)
    for index, template in enumerate(template_set.templates):
        _check(cancelled)
        report(index / n, f"registering template {template.name!r} ({index + 1}/{n})")
        t0 = time.perf_counter()
        fixed = registration_image(template.image, config.work_spacing_mm)
        transform = register_template(template.image, query, config, fixed=fixed, moving=moving, cancelled=cancelled)
        timings[f"register_{template.name}_s"] = time.perf_counter() - t0
        scores.append(_similarity(fixed, moving, transform))
        for s in structures:
            if template.labels is not None and s in template.label_ids:
                cloud = surface_points_lps(template.labels, template.mask(s), config.surface_points, config.seed)
                per_template_points[s].append(extreme_points_from_cloud(map_points(transform, cloud)))
            else:
                per_template_points[s].append(extreme_points_from_cloud(map_points(transform,
                                                                                   template.extreme_points(s))))
            if spl and split[s] > 1:
                per_template_slabs[s].append([extreme_points_from_cloud(map_points(transform, p))
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
                                                 "timings_s": {k: round(v, 3) for k, v in timings.items()}})
    return results
