"""One case end to end: localize every structure, segment and refine each, resolve overlaps, write the outputs."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path

import numpy as np

from MedFoundationSegLib import __version__
from MedFoundationSegLib.core import weights
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report, scaled
from MedFoundationSegLib.core.volume import Volume, read_volume
from MedFoundationSegLib.io import segmentation_io
from MedFoundationSegLib.localize.engines import choose_localizer, localize
from MedFoundationSegLib.segment.overlaps import resolve_overlaps
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult
from MedFoundationSegLib.workflow.session import Session

log = logging.getLogger(__name__)


def run_case(session: Session, template_set, query, case_dir=None, *, options: Options | None = None,
             structures=None, overwrite: bool = False, progress: ProgressCallback | None = None,
             cancelled: CancelCheck | None = None) -> dict:
    """Localize every structure of ``template_set`` in ``query`` (a Volume or a path), segment and refine each,
    resolve overlaps, and (with ``case_dir``) write labels, .seg.nrrd and report.json. Returns the report."""
    options = options or Options()
    start = time.perf_counter()
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
            volume, box.box_ijk, options, slabs=box.slabs,
            extreme_points_ijk=extreme_ijk if np.all(volume.contains_ijk(extreme_ijk)) else None,
            progress=scaled(progress, 0.3 + share * n, 0.3 + share * (n + 1)), cancelled=cancelled)
    labels, label_ids, overlaps = combine_structures(results, order=present, policy=options.overlap_policy)
    if labels is None:
        labels = np.zeros(volume.shape_kji, np.uint8)
    case_report = {"structures": {}}
    for name, box in boxes.items():
        entry = {"present": bool(box.present), "localization": box.to_dict()}
        if name in results:
            entry.update(segmentation=results[name].report, label=label_ids[name],
                         voxels=int((labels == label_ids[name]).sum()))
        case_report["structures"][name] = entry
    timings["total_s"] = round(time.perf_counter() - start, 3)
    case_report.update(
        status="ok", query=str(query) if not isinstance(query, Volume) else volume.name,
        localizer={"engine": engine, "reason": reason}, options=dataclasses.asdict(options),
        overlaps=overlaps, timings=timings, software=software_versions(options.model))
    if case_dir is not None:
        write_case_outputs(Path(case_dir), volume, labels, label_ids, case_report, overwrite=overwrite,
                           colors=segmentation_io.default_colors(list(label_ids)))
    case_report["labels_kji"] = labels  # in memory only (not written to JSON)
    report(progress, 1.0, "case done")
    return case_report


def combine_structures(results: dict[str, CaseResult], order: list[str], policy: str = "score"
                       ) -> tuple[np.ndarray | None, dict, dict]:
    """One label map from per-structure results; overlaps go to the higher model probability (``score``) or the
    earlier structure (``order``), and every contested voxel is counted in the returned report."""
    label_ids = {name: index + 1 for index, name in enumerate(order)}
    if not order:
        return None, label_ids, {"policy": policy, "voxels": {}}
    scores = {name: (results[name].probability_kji if results[name].probability_kji is not None
                     else results[name].mask_kji.astype(np.float32)) for name in order}
    merged = resolve_overlaps({name: results[name].mask_kji for name in order}, label_ids, policy=policy,
                              scores=scores)
    return merged.labels, label_ids, {"policy": policy,
                                      "voxels": {f"{winner} over {loser}": count
                                                 for (winner, loser), count in merged.overlaps.items()}}


def software_versions(model: str) -> dict:
    import torch

    versions = {"medfoundationseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "model": model}
    try:
        versions["model_sha256"] = weights.weight_spec(model).sha256
    except KeyError:
        pass
    return versions


def write_case_outputs(case_dir: Path, volume: Volume, labels: np.ndarray, label_ids: dict, case_report: dict, *,
                       overwrite: bool, colors: dict) -> dict:
    """labels.nii.gz, segmentation.seg.nrrd (names and colours for Slicer) and report.json, each written atomically;
    existing files are kept unless ``overwrite``. The report is written last: its presence marks the case done."""
    case_dir.mkdir(parents=True, exist_ok=True)
    paths = {"labels": case_dir / "labels.nii.gz", "segmentation": case_dir / "segmentation.seg.nrrd",
             "report": case_dir / "report.json"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"outputs exist ({existing[0]}, ...); pass --overwrite to replace them")
    segmentation_io.write_label_map(volume.with_array(labels), paths["labels"], overwrite=True)
    segmentation_io.write_seg_nrrd(volume.with_array(labels), paths["segmentation"],
                                   {name: (label, colors[name]) for name, label in label_ids.items()}, overwrite=True)
    case_report["outputs"] = {key: str(path) for key, path in paths.items()}
    segmentation_io.write_report(case_report, paths["report"], overwrite=True)
    return paths
