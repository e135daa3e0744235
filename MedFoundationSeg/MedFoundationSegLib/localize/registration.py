"""Registration localizer: no network weights needed.

Each template is registered to the query with SimpleITK (template = fixed image, query = moving image, so the final
transform maps template points straight into the query), multi-resolution, rigid then affine, optionally B-spline.
A structure's extreme points in the query are the extremes of its mapped template surface (or of its 6 points when the
template has no labels); several templates are combined by the per-coordinate median.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from MedFoundationSegLib.core.boxes import (
    StructureBox,
    extreme_points_from_cloud,
    lps_box_from_extreme_points,
    make_structure_box,
)
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.extreme_points import split_count
from MedFoundationSegLib.localize.preprocess import check_volume_3d
from MedFoundationSegLib.localize.registration_global import (
    Progress,
    RegistrationConfig,
    check_cancelled,
    itk_threads,
    register_template,
    registration_image,
    registration_images,
)
from MedFoundationSegLib.localize.registration_local import (
    label_boxes,
    map_points,
    register_structure,
    search_translation,
    similarity,
    structure_crop,
    structure_mask,
    surface_points_lps,
)
from MedFoundationSegLib.localize.templates import Template, TemplateSet


@dataclasses.dataclass
class _Evidence:
    """What the templates say about each structure: mapped extreme points and SPL slabs per template."""

    points: dict[str, list[np.ndarray]]
    slabs: dict[str, list[list[np.ndarray]]]
    local_info: dict[str, list[dict]]
    scores: list[float] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _images(volume: Volume, config: RegistrationConfig):
    """(global image, local image or None) of a volume at the configured spacings."""
    if config.local:
        return registration_images(volume, (config.work_spacing_mm, config.local_spacing_mm))
    return registration_image(volume, config.work_spacing_mm), None


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
    evidence = _Evidence({s: [] for s in structures}, {s: [] for s in structures}, {s: [] for s in structures})
    start = time.perf_counter()
    moving = _images(query, config)
    evidence.timings["query_prepare_s"] = time.perf_counter() - start
    split = {s: 1 for s in structures}
    if spl:
        for s in structures:
            split[s] = max(1, min(split_count(t.z_extent_mm(s), slice_interval) for t in template_set.templates))
    per_template = 1 + (len(structures) if config.local else 0)
    steps = len(template_set.templates) * per_template
    for index, template in enumerate(template_set.templates):
        check_cancelled(cancelled)
        report(index * per_template / steps, f"registering template {template.name!r} "
                                              f"({index + 1}/{len(template_set.templates)})")
        _add_template(template, query, moving, structures, split, config, evidence,
                      lambda n, s: report((index * per_template + 1 + n) / steps,
                                          f"refining {s!r} around template {template.name!r}"), cancelled)
    report(1.0, "combining templates")
    return {s: _combine(s, query, evidence, spl) for s in structures}


def _add_template(template: Template, query: Volume, moving, structures, split, config: RegistrationConfig,
                  evidence: _Evidence, report_structure, cancelled) -> None:
    """Register one template to the query and map each structure's surface (or points) through it."""
    t0 = time.perf_counter()
    fixed = _images(template.image, config)
    evidence.timings[f"template_prepare_{template.name}_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with itk_threads(config.threads):
        transform = register_template(template.image, query, config, fixed=fixed[0], moving=moving[0],
                                      cancelled=cancelled)
    evidence.timings[f"register_{template.name}_s"] = time.perf_counter() - t0
    evidence.scores.append(similarity(fixed[0], moving[0], transform))
    boxes_kji = label_boxes(template)
    crops = {s: structure_crop(template, s, boxes_kji) for s in structures
             if template.labels is not None and s in template.label_ids}
    for number, s in enumerate(structures):
        structure_transform = transform
        if config.local:
            check_cancelled(cancelled)
            report_structure(number, s)
            structure_transform = _refine_structure(template, s, fixed, moving, transform, crops.get(s), config,
                                                    evidence)
        if s in crops:
            offset, part = crops[s]
            cloud = surface_points_lps(template.labels, part, config.surface_points, config.seed, offset)
        else:
            cloud = template.extreme_points(s)
        evidence.points[s].append(extreme_points_from_cloud(map_points(structure_transform, cloud)))
        if split[s] > 1:
            evidence.slabs[s].append([extreme_points_from_cloud(map_points(structure_transform, points))
                                      for points in template.slab_points(s, split[s])])


def _refine_structure(template: Template, s: str, fixed, moving, transform, crop, config: RegistrationConfig,
                      evidence: _Evidence):
    """The structure-local stage: a crop around the structure registered from the global transform."""
    t1 = time.perf_counter()
    box = lps_box_from_extreme_points(template.extreme_points(s))
    mask = structure_mask(template, s, fixed[1], config.local_mask_margin_mm, crop)
    with itk_threads(config.threads):
        shift = None
        if config.local_search_mm > 0:
            shift = search_translation(fixed[0], moving[0], transform, box, config,
                                       structure_mask(template, s, fixed[0], config.local_mask_margin_mm, crop))
        if config.regional_margin_mm > 0:
            wide = dataclasses.replace(config, local_margin_mm=config.regional_margin_mm)
            transform, _ = register_structure(fixed[1], moving[1], transform, box, wide)
        transform, info = register_structure(fixed[1], moving[1], transform, box, config, fixed_mask=mask,
                                             initial_shift_mm=shift)
        if shift is not None:
            info["search_shift_mm"] = np.round(shift, 1).tolist()
    info["seconds"] = round(time.perf_counter() - t1, 3)
    evidence.local_info[s].append(info)
    evidence.timings[f"local_{template.name}_{s}_s"] = time.perf_counter() - t1
    return transform


def _combine(s: str, query: Volume, evidence: _Evidence, spl: bool) -> StructureBox:
    """Median over templates; confidence from the templates' image similarity and how much their walls agree."""
    stack = np.stack(evidence.points[s])  # (T, 6, 3)
    points = np.median(stack, axis=0)
    walls = np.stack([np.array([p[0, 0], p[1, 0], p[2, 1], p[3, 1], p[4, 2], p[5, 2]]) for p in stack])
    spread_mm = float(np.median(np.abs(walls - np.median(walls, axis=0)))) if len(stack) > 1 else 0.0
    confidence = float(np.median(evidence.scores)) * float(np.exp(-spread_mm / 20.0))
    slabs = None
    if spl and evidence.slabs[s]:
        slabs = list(np.median(np.stack([np.stack(t) for t in evidence.slabs[s]]), axis=0))
    return make_structure_box(s, points, query, "registration", confidence, slab_points_lps=slabs,
                              details={"template_similarity": evidence.scores, "wall_spread_mm": spread_mm,
                                       "local_registration": evidence.local_info[s],
                                       "timings_s": {k: round(v, 3) for k, v in evidence.timings.items()}})
