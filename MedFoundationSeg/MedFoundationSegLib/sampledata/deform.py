"""Random affine + elastic warps of a volume with its labels: stand-in "other subjects" for tests and benchmarks.

Why: no organ-labelled CT is downloadable here; a deformed copy of a labelled volume (labels warped along, nearest
neighbour) is a second subject with exactly known anatomy.
"""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core.volume import Volume


def random_warp(reference: Volume, seed: int, rotation_deg: float = 8.0, scale: float = 0.08,
                translation_mm: float = 10.0, elastic_mm: float = 4.0, control_points: int = 5):
    """A SimpleITK transform (output point -> input point) centred on the volume: random affine then B-spline."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    image = reference.to_sitk()
    centre = reference.lps_from_ijk(np.array(reference.shape_kji[::-1], float)[None] / 2 - 0.5)[0]
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    euler = sitk.Euler3DTransform(tuple(centre), *angles.tolist(), tuple(rng.uniform(-translation_mm, translation_mm, 3)))
    matrix = np.array(euler.GetMatrix()).reshape(3, 3) @ np.diag(1 + rng.uniform(-scale, scale, 3))
    affine = sitk.AffineTransform(matrix.ravel().tolist(), euler.GetTranslation(), tuple(centre))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    if elastic_mm > 0:
        bspline = sitk.BSplineTransformInitializer(image, [control_points] * 3)
        params = rng.normal(0.0, elastic_mm / 2, len(bspline.GetParameters()))
        bspline.SetParameters(np.clip(params, -elastic_mm, elastic_mm).tolist())
        composite.AddTransform(bspline)
    return composite


def deformed_copy(image: Volume, labels: Volume | None, seed: int, noise_sd: float = 0.0, **warp) -> tuple:
    """(warped image, warped labels or None) on the original grid; intensities outside are the image minimum."""
    import SimpleITK as sitk

    transform = random_warp(image, seed, **warp)
    sitk_image = image.to_sitk()
    warped = sitk.Resample(sitk_image, sitk_image, transform, sitk.sitkLinear, float(image.array.min()))
    array = sitk.GetArrayFromImage(warped)
    if noise_sd > 0:
        rng = np.random.default_rng(seed + 1)
        array = (array + rng.normal(0, noise_sd, array.shape)).astype(image.array.dtype)
    out_image = image.with_array(array, name=f"{image.name}_warp{seed}")
    out_labels = None
    if labels is not None:
        warped_labels = sitk.Resample(labels.to_sitk(), sitk_image, transform, sitk.sitkNearestNeighbor, 0)
        out_labels = labels.with_array(sitk.GetArrayFromImage(warped_labels), name=f"{labels.name}_warp{seed}")
    return out_image, out_labels
