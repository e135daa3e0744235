"""One case end to end: localize every structure, segment and refine each, resolve overlaps, write the outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from MedFoundationSegLib import __version__
from MedFoundationSegLib.core import weights
from MedFoundationSegLib.core.dicom_series import DicomSeries
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report, scaled
from MedFoundationSegLib.core.volume import Volume, read_volume
from MedFoundationSegLib.io import case_outputs, segmentation_io
from MedFoundationSegLib.localize.engines import choose_localizer, localize
from MedFoundationSegLib.segment.overlaps import resolve_overlaps
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult
from MedFoundationSegLib.workflow.session import Session

log = logging.getLogger(__name__)


def run_case(session: Session, template_set, query, case_dir=None, *, options: Options | None = None,
             structures=None, overwrite: bool = False, heads: dict | None = None,
             progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> dict:
    """Localize every structure of ``template_set`` in ``query`` (a Volume or a path), segment and refine each,
    resolve overlaps, and (with ``case_dir``) write labels, .seg.nrrd and report.json. Returns the report.
    ``heads``: structure name -> stored head arrays (io/head_store.py); a structure with one starts from it."""
    options = options or Options()
    start = time.perf_counter()
    if case_dir is not None:  # a folder that cannot take the outputs fails now, not after the work
        case_outputs.check_replaceable(Path(case_dir), overwrite)
    volume = query if isinstance(query, Volume) else read_volume(query)
    engine, reason = choose_localizer(options.engine)
    report(progress, 0.0, f"localizing with {engine}")
    boxes = localize(template_set, volume, engine, structures=structures, seed=options.seed, spl=options.spl,
                     slice_interval=options.slice_interval, recentre_iterations=options.recentre_iterations,
                     progress=scaled(progress, 0.0, 0.3), cancelled=cancelled)
    timings = {"localize_s": round(time.perf_counter() - start, 3)}
    present = [name for name, box in boxes.items() if box.present and box.box_ijk is not None]
    results = {}
    for n, name in enumerate(present):
        check(cancelled, "case")
        box = boxes[name]
        extreme_ijk = volume.ijk_from_lps(box.extreme_points_lps)
        share = 0.6 / max(len(present), 1)
        results[name] = session.segment_box(
            volume, box.box_ijk, options, slabs=box.slabs, prior_head=_prior(heads, name),
            extreme_points_ijk=extreme_ijk if np.all(volume.contains_ijk(extreme_ijk)) else None,
            progress=scaled(progress, 0.3 + share * n, 0.3 + share * (n + 1)), cancelled=cancelled,
            head_shape=False)  # a case stores no head: its shape and atlases are not built
    label_ids = {name: index + 1 for index, name in enumerate(boxes)}  # one map per template set, absent or not
    labels, overlaps = combine_structures(results, order=present, label_ids=label_ids, policy=options.overlap_policy)
    if labels is None:
        labels = np.zeros(volume.shape_kji, np.uint8)
    case_report = {"structures": {}}
    for name, box in boxes.items():
        entry = {"present": bool(box.present), "partial": box.partial, "fraction_inside": round(box.fraction_inside, 4),
                 "label": label_ids[name], "localization": box.to_dict()}
        if name in results:
            entry.update(segmentation=results[name].report, voxels=int((labels == label_ids[name]).sum()))
        case_report["structures"][name] = entry
    timings["total_s"] = round(time.perf_counter() - start, 3)
    case_report.update(
        status="ok", query=str(query) if not isinstance(query, Volume) else volume.name,
        localizer={"engine": engine, "reason": reason}, options=dataclasses.asdict(options), label_map=label_ids,
        overlaps=overlaps, timings=timings, software=software_versions(options.model),
        fingerprint=case_fingerprint(template_set, options, structures, heads))
    if case_dir is not None:
        case_outputs.write_case(Path(case_dir), volume, labels, label_ids, case_report, overwrite=overwrite,
                                colors=segmentation_io.default_colors(list(label_ids)),
                                formats=options.output_formats,
                                dicom_series=query if isinstance(query, DicomSeries) else None)
    case_report["labels_kji"] = labels  # in memory only (not written to JSON)
    report(progress, 1.0, "case done")
    return case_report


def check_prerequisites(options: Options) -> None:
    """What a run needs, checked before any work: a known model, its weights in the cache, the device asked for."""
    models = weights.model_names("box-prompt")
    if options.model not in models:
        raise ValueError(f"unknown model {options.model!r}; use one of {', '.join(models)}")
    weights.weights_path(options.model)  # names the command that fetches missing or damaged weights
    if options.device != "auto":
        from MedFoundationSegLib.runtime.encoder_runtime import select_device

        select_device(options.device)


def check_template_set(template_set, structures: list[str] | None = None) -> None:
    """Every template readable and usable, and every structure held by all of them, before the first case (so a bad
    template fails once, up front, not in every case)."""
    from MedFoundationSegLib.localize.preprocess import check_volume_3d

    for template in template_set.templates:
        check_volume_3d(template.image, f"template {template.name!r} image")
    names = list(structures or template_set.structures())
    template_set.check(names)
    for template in template_set.templates:
        for name in names:
            template.extreme_points(name)


def combine_structures(results: dict[str, CaseResult], order: list[str], label_ids: dict[str, int],
                       policy: str = "score") -> tuple[np.ndarray | None, dict]:
    """One label map from per-structure results (values from ``label_ids``); overlaps go to the higher model
    probability (``score``) or the earlier structure (``order``), and every contested voxel is counted."""
    if not order:
        return None, {"policy": policy, "voxels": {}}
    scores = {name: (results[name].probability_kji if results[name].probability_kji is not None
                     else results[name].mask_kji.astype(np.float32)) for name in order}
    merged = resolve_overlaps({name: results[name].mask_kji for name in order}, label_ids, policy=policy,
                              scores=scores)
    return merged.labels, {"policy": policy, "voxels": {f"{winner} over {loser}": count
                                                        for (winner, loser), count in merged.overlaps.items()}}


def _prior(heads: dict | None, name: str):
    if not heads or name not in heads:
        return None
    from MedFoundationSegLib.segment.structure_head import StructureHead

    return StructureHead.from_arrays(heads[name])


def case_fingerprint(template_set, options: Options, structures=None, heads: dict | None = None) -> str:
    """What made a case: the templates (voxels, geometry, points, labels), the structures asked for, the options,
    the stored heads it started from, the model's weights and this version. A finished case with another fingerprint
    is stale."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(heads or {}):
        digest.update(name.encode("utf-8"))
        for key in sorted(heads[name]):  # every array: weights, shape, atlases, adapted decoder layers
            digest.update(key.encode("utf-8") + np.ascontiguousarray(heads[name][key]).tobytes())
    for template in template_set.templates:
        image = template.image
        digest.update(json.dumps([template.name, list(image.spacing_mm), list(image.origin_lps_mm),
                                  np.asarray(image.direction).round(6).tolist(), template.label_ids,
                                  {k: np.asarray(v).round(4).tolist() for k, v in sorted(template.points_lps.items())}
                                  ], sort_keys=True).encode("utf-8"))
        digest.update(memoryview(np.ascontiguousarray(image.array)).cast("B"))
        if template.labels is not None:
            digest.update(memoryview(np.ascontiguousarray(template.labels.array)).cast("B"))
    software = software_versions(options.model)
    digest.update(json.dumps([sorted(structures or []), dataclasses.asdict(options), software.get("model_sha256"),
                              software["medfoundationseg"]], sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def software_versions(model: str) -> dict:
    import torch

    versions = {"medfoundationseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "model": model}
    try:
        versions["model_sha256"] = weights.weight_spec(model).sha256
    except KeyError:
        pass
    return versions
