"""One case end to end — localize, segment every structure from its box, refine, write — and the Session that keeps
models and slice embeddings warm across calls. Used by the demo, the batch, the CLI and the Slicer Logic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from . import __version__
from .progress import check, report, scaled
from .volume import Volume

log = logging.getLogger(__name__)

# Slice axis -> (array axis held fixed, ijk index of that axis, ijk index of the slice's x (columns), of its y (rows)).
AXIS_LAYOUT = {"axial": (0, 2, 0, 1), "coronal": (1, 1, 0, 2), "sagittal": (2, 0, 1, 2)}


@dataclasses.dataclass
class CaseOptions:
    engine: str = "auto"  # localization: auto | medlam | registration
    model: str = "litemedsam"
    device: str = "auto"
    window: object = "auto"
    axis: str = "axial"
    padding_mm: float = 5.0
    refine: str = "graphcut"  # graphcut | geodesic | growcut | none
    overlap_policy: str = "score"  # score | order
    seed: int = 0
    cache_mb: int = 2048


@dataclasses.dataclass
class CaseResult:
    """A structure's (or a case's) mask and what produced it."""

    mask_kji: np.ndarray
    probability_kji: np.ndarray | None = None
    report: dict = dataclasses.field(default_factory=dict)

    def report_summary(self) -> dict:
        """The part of the report worth storing in a segment tag (no per-voxel data)."""
        keys = ("mode", "model", "slices", "stop_reasons", "seconds", "refine", "voxels")
        return {k: self.report[k] for k in keys if k in self.report}


def slice_box_xyxy(box_ijk: np.ndarray, axis: str, padding_px: tuple[float, float], slice_hw) -> np.ndarray:
    """The 2D box of a 3D ijk box on one slice of ``axis``, padded and clipped to the slice."""
    _, _, x_ijk, y_ijk = AXIS_LAYOUT[axis]
    (lo, hi) = np.asarray(box_ijk, float)
    box = np.array([lo[x_ijk] - padding_px[0], lo[y_ijk] - padding_px[1],
                    hi[x_ijk] + padding_px[0], hi[y_ijk] + padding_px[1]])
    height, width = slice_hw
    return np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])


class Session:
    """Keeps one SlicePredictor per (volume, model, axis, window): several structures, repeated prompts and
    interactive corrections on a volume never re-encode a slice."""

    def __init__(self, max_predictors: int = 2):
        self.max_predictors = max_predictors
        self._predictors: dict[tuple, object] = {}

    def predictor(self, volume: Volume, *, model: str, device: str = "auto", window="auto", axis: str = "axial",
                  cache_mb: int = 2048):
        from .predictor import SlicePredictor

        key = (id(volume.array), volume.array.shape, model, device, json.dumps(window, sort_keys=True, default=str),
               axis)
        if key not in self._predictors:
            while len(self._predictors) >= self.max_predictors:
                self._predictors.pop(next(iter(self._predictors)))
            self._predictors[key] = SlicePredictor(volume, model, axis=axis, window=window, device=device,
                                                   cache_bytes=int(cache_mb) * 1024 ** 2)
        return self._predictors[key]

    # --- one structure ------------------------------------------------------------------------------------------
    def segment_box(self, volume: Volume, box_ijk, *, model: str = "litemedsam", device: str = "auto",
                    window="auto", axis: str = "axial", padding_mm: float = 5.0, slabs=None, refine: str = "none",
                    extreme_points_ijk=None, cache_mb: int = 2048, progress=None, cancelled=None,
                    **_ignored) -> CaseResult:
        """MedLSAM-style: every slice in the box's range gets the box (or its SPL slab's box) as prompt.
        No ground truth picks slices; all of them are segmented. ``refine`` then cleans the 3D result."""
        from .segmenter import PredictorSegmenter

        start = time.perf_counter()
        box_ijk = np.asarray(box_ijk, int)
        upper = np.array(volume.shape_kji[::-1]) - 1
        if box_ijk.shape != (2, 3) or np.any(box_ijk[0] > box_ijk[1]):
            raise ValueError(f"a box is [[i0, j0, k0], [i1, j1, k1]] with lo <= hi; got {box_ijk.tolist()}")
        if np.any(box_ijk[1] < 0) or np.any(box_ijk[0] > upper):
            raise ValueError(f"the box {box_ijk.tolist()} lies outside the volume (ijk 0..{upper.tolist()})")
        box_ijk = np.clip(box_ijk, 0, upper)
        predictor = self.predictor(volume, model=model, device=device, window=window, axis=axis, cache_mb=cache_mb)
        segmenter = PredictorSegmenter(predictor)
        fixed_array_axis, fixed_ijk, x_ijk, y_ijk = AXIS_LAYOUT[axis]
        spacing = np.asarray(volume.spacing_mm)
        padding_px = (padding_mm / spacing[x_ijk], padding_mm / spacing[y_ijk])
        first, last = int(box_ijk[0, fixed_ijk]), int(box_ijk[1, fixed_ijk])
        slab_boxes = [(np.asarray(s.box_ijk, int)) for s in (slabs or []) if getattr(s, "box_ijk", None) is not None]

        mask = np.zeros(volume.shape_kji, bool)
        probability = np.zeros(volume.shape_kji, np.float32)
        scores = {}
        report(progress, 0.0, f"encoding {last - first + 1} slices")
        predictor.encode_range(first, last, progress=scaled(progress, 0.0, 0.7), cancelled=cancelled)
        for n, index in enumerate(range(first, last + 1)):
            check(cancelled, "segmentation")
            slice_box = box_ijk
            for slab in slab_boxes:  # SPL: the slab covering this slice gives a tighter box
                if slab[0, fixed_ijk] <= index <= slab[1, fixed_ijk]:
                    slice_box = slab
                    break
            box_xyxy = slice_box_xyxy(slice_box, axis, padding_px, segmenter.slice_hw)
            result = segmenter.segment_slice(index, box_xyxy)
            where = (slice(None),) * fixed_array_axis + (index,)
            mask[where] = result.mask
            probability[where] = result.probability
            scores[index] = round(result.predicted_iou, 4)
            report(progress, 0.7 + 0.25 * (n + 1) / (last - first + 1), f"slice {index} ({n + 1}/{last - first + 1})")
        outcome = CaseResult(mask, probability, {
            "mode": "box", "model": model, "axis": axis, "slices": [first, last], "predicted_iou": scores,
            "padding_mm": padding_mm, "slabs": len(slab_boxes), "slices_encoded": predictor.slices_encoded})
        if refine and refine != "none":
            outcome = self.refine_result(volume, outcome, method=refine, box_ijk=box_ijk,
                                         extreme_points_ijk=extreme_points_ijk)
        outcome.report["seconds"] = round(time.perf_counter() - start, 3)
        outcome.report["voxels"] = int(outcome.mask_kji.sum())
        report(progress, 1.0, "done")
        return outcome

    def refine_result(self, volume: Volume, result: CaseResult, *, method: str, box_ijk=None,
                      extreme_points_ijk=None, positive_ijk=None, negative_ijk=None, scribble_kji=None) -> CaseResult:
        from . import refine as refine_module

        probability = result.probability_kji if result.probability_kji is not None else \
            result.mask_kji.astype(np.float32)
        clicks, positive = [], []
        for points, is_positive in ((positive_ijk, True), (negative_ijk, False)):
            for point in (np.zeros((0, 3)) if points is None else np.atleast_2d(points)):
                clicks.append(np.round(point[::-1]).astype(int))
                positive.append(is_positive)
        box_kji = None if box_ijk is None else tuple((int(box_ijk[0][a]), int(box_ijk[1][a])) for a in (2, 1, 0))
        annotations = refine_module.Annotations(
            box_kji=box_kji,
            extreme_points_kji=None if extreme_points_ijk is None else np.round(
                np.asarray(extreme_points_ijk)[:, ::-1]).astype(int),
            clicks_kji=np.array(clicks) if clicks else None,
            click_positive=np.array(positive) if clicks else None,
            fg_scribble=scribble_kji)
        refined = refine_module.refine(volume.array.astype(np.float32), probability, annotations, method=method,
                                       spacing_mm=volume.spacing_mm)
        report_ = dict(result.report, refine=method, raw_voxels=int(result.mask_kji.sum()))
        return CaseResult(np.asarray(refined.mask, bool), probability, report_)

    # --- a whole case ----------------------------------------------------------------------------------------------
    def run_case(self, template_set, query, case_dir=None, *, options: CaseOptions | None = None,
                 structures=None, overwrite: bool = False, progress=None, cancelled=None) -> dict:
        """Localize every structure of ``template_set`` in ``query`` (a Volume or a path), segment and refine each,
        resolve overlaps, and (with ``case_dir``) write labels, .seg.nrrd and report.json. Returns the report."""
        from MedLAMLocalizeLib.boxes import StructureBox  # noqa: F401  (the localizers' result type)

        from .volume import read_volume

        options = options or CaseOptions()
        start = time.perf_counter()
        volume = query if isinstance(query, Volume) else read_volume(query)
        engine, reason = choose_localizer(options.engine)
        report(progress, 0.0, f"localizing with {engine}")
        boxes = localize(template_set, volume, engine, structures=structures, seed=options.seed,
                         progress=scaled(progress, 0.0, 0.3), cancelled=cancelled)
        timings = {"localize_s": round(time.perf_counter() - start, 3)}
        results, case_report = {}, {"structures": {}}
        present = [name for name, box in boxes.items() if box.present and box.box_ijk is not None]
        for n, name in enumerate(present):
            check(cancelled, "case")
            box = boxes[name]
            extreme_ijk = volume.ijk_from_lps(box.extreme_points_lps)
            results[name] = self.segment_box(
                volume, box.box_ijk, model=options.model, device=options.device, window=options.window,
                axis=options.axis, padding_mm=options.padding_mm, slabs=box.slabs, refine=options.refine,
                extreme_points_ijk=extreme_ijk if np.all(volume.contains_ijk(extreme_ijk)) else None,
                cache_mb=options.cache_mb,
                progress=scaled(progress, 0.3 + 0.6 * n / max(len(present), 1), 0.3 + 0.6 * (n + 1) / max(len(present), 1)),
                cancelled=cancelled)
        labels, label_ids, overlaps = combine_structures({n: r for n, r in results.items()}, order=present,
                                                         policy=options.overlap_policy)
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
            from . import segmentation_io

            write_case_outputs(Path(case_dir), volume, labels, label_ids, case_report, overwrite=overwrite,
                               colors=segmentation_io.default_colors(list(label_ids)))
        case_report["labels_kji"] = labels  # in memory only (not written to JSON)
        report(progress, 1.0, "case done")
        return case_report


def combine_structures(results: dict, order: list[str], policy: str = "score") -> tuple[np.ndarray, dict, dict]:
    """One label map from per-structure masks. Where masks overlap, ``score`` gives the voxel to the structure with
    the higher model probability and ``order`` to the earlier structure; every overlap is counted in the report."""
    if policy not in ("score", "order"):
        raise ValueError(f"overlap policy must be 'score' or 'order'; got {policy!r}")
    label_ids = {name: index + 1 for index, name in enumerate(order)}
    shape = next(iter(results.values())).mask_kji.shape if results else (0, 0, 0)
    labels = np.zeros(shape, np.uint16 if len(order) > 255 else np.uint8)
    best = np.full(shape, -1.0, np.float32)
    overlaps = {}
    for name in order:
        result = results[name]
        mask = result.mask_kji
        taken = mask & (labels > 0)
        if taken.any():
            for other in np.unique(labels[taken]):
                other_name = order[int(other) - 1]
                overlaps[f"{other_name}|{name}"] = int((taken & (labels == other)).sum())
        score = result.probability_kji if result.probability_kji is not None else mask.astype(np.float32)
        wins = mask & ((labels == 0) | ((score > best) if policy == "score" else False))
        labels[wins] = label_ids[name]
        best[wins] = score[wins]
    return labels, label_ids, {"policy": policy, "voxels": overlaps}


def choose_localizer(requested: str = "auto") -> tuple[str, str]:
    """(engine, reason): MedLAM when its weights are in the cache, else the registration localizer."""
    from . import weights

    if requested == "registration":
        return "registration", "registration localizer requested"
    path, status = weights.cached_status("medlam")
    if status.startswith("ok"):
        return "medlam", f"MedLAM weights found ({path.name})"
    if requested == "medlam":
        raise weights.MissingWeightsError(f"MedLAM weights are {status}; fetch them with: "
                                          "medfoundationseg weights fetch medlam")
    if requested != "auto":
        raise ValueError(f"unknown localization engine {requested!r}; use auto, medlam or registration")
    return "registration", (f"MedLAM weights {status}: using the registration localizer "
                            "(fetch them with `medfoundationseg weights fetch medlam`)")


def localize(template_set, volume: Volume, engine: str, *, structures=None, seed: int = 0, progress=None,
             cancelled=None) -> dict:
    """Dispatch to the chosen localizer; both return {name: StructureBox}."""
    if engine == "registration":
        from MedLAMLocalizeLib.registration import localize_registration

        return localize_registration(template_set, volume, structures, progress=progress, cancelled=cancelled)
    if engine == "medlam":
        from MedLAMLocalizeLib.localize import localize_medlam

        return localize_medlam(template_set, volume, structures, seed=seed, progress=progress, cancelled=cancelled)
    raise ValueError(f"unknown localization engine {engine!r}")


def software_versions(model: str) -> dict:
    import torch

    from . import weights

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
    from . import segmentation_io

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
