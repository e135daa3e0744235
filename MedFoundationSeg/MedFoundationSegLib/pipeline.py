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

# How a 3D box becomes slice prompts (see propagate.py): box_guided (default: middle slice from the box, then the
# previous mask's box capped by the 3D box), box (MedLSAM: the box on every slice), every_k (box_guided on key
# slices + contour interpolation: fewest encoder passes), guided (stop rules may leave the box), reference (the peer).
SEGMENTATION_MODES = ("box_guided", "box", "every_k", "guided", "reference")

# Slice axis -> (array axis held fixed, ijk index of that axis, ijk index of the slice's x (columns), of its y (rows)).
AXIS_LAYOUT = {"axial": (0, 2, 0, 1), "coronal": (1, 1, 0, 2), "sagittal": (2, 0, 1, 2)}


@dataclasses.dataclass
class CaseOptions:
    engine: str = "auto"  # localization: auto | medlam | registration
    model: str = "litemedsam"
    device: str = "auto"
    window: object = "auto"
    axis: str = "axial"
    mode: str = "box_guided"  # one of SEGMENTATION_MODES
    padding_mm: float = 5.0
    # ... at most this fraction of the box's smaller in-plane side. Off by default: it helped exact-ish boxes on MR
    # (Colin27, 12 structures: 0.437 -> 0.459) but cost the CT demo 0.851 -> 0.844 (registration boxes, IoU ~0.6).
    padding_fraction: float | None = None
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

    # --- views along the slice axis ------------------------------------------------------------------------------
    @staticmethod
    def _to_slices(array: np.ndarray, axis: str) -> np.ndarray:
        """(z, y, x) -> (slice, row, column) for ``axis``, matching the predictor's slice frames."""
        return np.moveaxis(array, AXIS_LAYOUT[axis][0], 0)

    @staticmethod
    def _from_slices(array: np.ndarray, axis: str) -> np.ndarray:
        return np.moveaxis(array, 0, AXIS_LAYOUT[axis][0])

    def _segmenter(self, volume: Volume, *, model, device, window, axis, cache_mb):
        from .segmenter import PredictorSegmenter

        return PredictorSegmenter(self.predictor(volume, model=model, device=device, window=window, axis=axis,
                                                 cache_mb=cache_mb))

    @staticmethod
    def _check_box(volume: Volume, box_ijk) -> np.ndarray:
        box_ijk = np.asarray(box_ijk, int)
        upper = np.array(volume.shape_kji[::-1]) - 1
        if box_ijk.shape != (2, 3) or np.any(box_ijk[0] > box_ijk[1]):
            raise ValueError(f"a box is [[i0, j0, k0], [i1, j1, k1]] with lo <= hi; got {box_ijk.tolist()}")
        if np.any(box_ijk[1] < 0) or np.any(box_ijk[0] > upper):
            raise ValueError(f"the box {box_ijk.tolist()} lies outside the volume (ijk 0..{upper.tolist()})")
        return np.clip(box_ijk, 0, upper)

    @staticmethod
    def _slice_box(box_ijk: np.ndarray, axis: str):
        """ijk box -> ((first, last), (row0, row1), (col0, col1)) in the slice-major frame of ``axis``."""
        _, fixed, x_ijk, y_ijk = AXIS_LAYOUT[axis]
        return ((int(box_ijk[0, fixed]), int(box_ijk[1, fixed])), (int(box_ijk[0, y_ijk]), int(box_ijk[1, y_ijk])),
                (int(box_ijk[0, x_ijk]), int(box_ijk[1, x_ijk])))

    # --- one structure ------------------------------------------------------------------------------------------
    def segment_box(self, volume: Volume, box_ijk, *, model: str = "litemedsam", device: str = "auto",
                    window="auto", axis: str = "axial", padding_mm: float = 5.0, padding_fraction: float | None = None,
                    slabs=None, refine: str = "none", mode: str = "box_guided", every_k=None, extreme_points_ijk=None,
                    cache_mb: int = 2048, progress=None, cancelled=None) -> CaseResult:
        """Segment a structure from its 3D box. ``mode`` (SEGMENTATION_MODES): ``box_guided`` (default: the middle
        slice from the box, each next slice from the previous mask's box capped by the 3D box; no end-slice shelf),
        ``box`` (MedLSAM: every slice in the range gets the box or its SPL slab's box), ``every_k`` (box_guided on
        every k-th slice, auto-chosen about 7.5 mm apart, contour interpolation between; only those are encoded),
        ``guided`` (middle slice, then stop rules that may leave the box) or ``reference`` (the peer procedure).

        ``padding_fraction``: cap the padding at this fraction of the box's smaller in-plane side (a localized box of
        a small structure is padded less: 5 mm around a 20 mm caudate swallowed its neighbours)."""
        from . import propagate

        start = time.perf_counter()
        if mode not in SEGMENTATION_MODES:
            raise ValueError(f"unknown segmentation mode {mode!r}; use {', '.join(SEGMENTATION_MODES)}")
        box_ijk = self._check_box(volume, box_ijk)
        segmenter = self._segmenter(volume, model=model, device=device, window=window, axis=axis, cache_mb=cache_mb)
        (first, last), (r0, r1), (c0, c1) = self._slice_box(box_ijk, axis)
        shape = self._to_slices(volume.array, axis).shape
        _, fixed, x_ijk, y_ijk = AXIS_LAYOUT[axis]
        spacing = np.asarray(volume.spacing_mm)
        slab_boxes = []
        for slab in slabs or []:
            if getattr(slab, "box_ijk", None) is not None:
                (sf, sl), (sr0, sr1), (sc0, sc1) = self._slice_box(np.asarray(slab.box_ijk, int), axis)
                slab_boxes.append((sf, sl, (sc0, sr0, sc1, sr1)))
        box_slices = ((first, last), (r0, r1), (c0, c1))
        pixel_mm = (spacing[x_ijk], spacing[y_ijk])
        if padding_fraction is not None:
            side_mm = min((c1 - c0 + 1) * spacing[x_ijk], (r1 - r0 + 1) * spacing[y_ijk])
            padding_mm = min(float(padding_mm), float(padding_fraction) * side_mm)
        rest = scaled(progress, 0.7, 0.95)
        if mode == "every_k":  # only the key slices are encoded
            step = every_k or propagate.auto_step(last - first + 1, float(spacing[fixed]))
            segmenter.predictor.encode_slices(propagate.box_grid(first, last, int(step)),
                                              progress=scaled(progress, 0.0, 0.7), cancelled=cancelled)
            result = propagate.box_every_kth(segmenter, shape, box_slices, step=int(step), spacing_mm=pixel_mm,
                                             pad_mm=padding_mm, slabs=slab_boxes, progress=rest, cancelled=cancelled)
        else:
            report(progress, 0.0, f"encoding {last - first + 1} slices")
            segmenter.predictor.encode_range(first, last, progress=scaled(progress, 0.0, 0.7), cancelled=cancelled)
        if mode in ("box", "box_guided"):
            method = propagate.box_per_slice if mode == "box" else propagate.box_guided
            result = method(segmenter, shape, box_slices, spacing_mm=pixel_mm, pad_mm=padding_mm, slabs=slab_boxes,
                            progress=rest, cancelled=cancelled)
        elif mode == "reference":
            result = propagate.reference_litemedsam(segmenter, shape, (c0, r0, first, c1, r1, last), progress=rest,
                                                    cancelled=cancelled)
        elif mode == "guided":
            seeds = {(first + last) // 2: np.array([c0, r0, c1, r1])}
            result = propagate.propagate_from_seeds(segmenter, shape, seeds, limits=(first, last),
                                                    image=self._to_slices(volume.array, axis), progress=rest,
                                                    cancelled=cancelled)
        mask = self._from_slices(result.mask, axis)
        probability_view = segmenter.probability_volume(result.segmented)
        for k in result.interpolated:  # no model output there: the interpolated contour is moderate evidence
            probability_view[k] = np.where(result.mask[k], 0.8, 0.2)
        probability = self._from_slices(probability_view, axis)
        outcome = CaseResult(mask, probability, {
            "mode": mode, "model": model, "axis": axis, "slices": [first, last], "segmented": result.segmented,
            "predicted_iou": {int(k): round(v, 4) for k, v in result.iou.items()},
            "stop_reasons": result.stop_reasons, "interpolated": result.interpolated, "padding_mm": padding_mm,
            "slices_encoded": segmenter.predictor.slices_encoded})
        if refine and refine != "none":
            outcome = self.refine_result(volume, outcome, method=refine, box_ijk=box_ijk,
                                         extreme_points_ijk=extreme_points_ijk)
        outcome.report["seconds"] = round(time.perf_counter() - start, 3)
        outcome.report["voxels"] = int(outcome.mask_kji.sum())
        report(progress, 1.0, "done")
        return outcome

    def propagate(self, volume: Volume, seed_kji: np.ndarray, *, slice_index: int | None = None,
                  outward_only: bool = False, model: str = "litemedsam", device: str = "auto", window="auto",
                  axis: str = "axial", mode: str = "guided", every_k=None, cache_mb: int = 2048, progress=None,
                  cancelled=None) -> CaseResult:
        """Propagate a structure drawn on some slices to the rest of it, both ways, with stop rules.

        The seeds are the non-empty slices of ``seed_kji`` (or only ``slice_index``). ``outward_only``: the user
        corrected ``slice_index``; keep everything between it and the other seeds and redo only the slices beyond."""
        from . import propagate

        start = time.perf_counter()
        seeds_view = self._to_slices(np.asarray(seed_kji, bool), axis)
        annotated = [int(k) for k in np.flatnonzero(seeds_view.any(axis=(1, 2)))]
        if not annotated:
            raise ValueError("nothing to propagate: the segment is empty")
        if slice_index is not None and not seeds_view[int(slice_index)].any():
            raise ValueError(f"slice {slice_index} of the segment is empty: draw the structure there first")
        segmenter = self._segmenter(volume, model=model, device=device, window=window, axis=axis, cache_mb=cache_mb)
        image = self._to_slices(volume.array, axis)
        spacing_slice_mm = float(np.asarray(volume.spacing_mm)[AXIS_LAYOUT[axis][1]])
        if outward_only:
            if slice_index is None:
                raise ValueError("re-propagation needs the edited slice index")
            others = [k for k in annotated if k != int(slice_index)]
            previous = propagate.PropagationResult(mask=seeds_view.copy(), iou={k: 1.0 for k in annotated},
                                                   segmented=annotated, stop_reasons={}, seeds=others or [slice_index])
            result = propagate.repropagate_from_edit(segmenter, previous, int(slice_index),
                                                     seeds_view[int(slice_index)], image=image)
        else:
            seeds = {int(slice_index): seeds_view[int(slice_index)]} if slice_index is not None else \
                {k: seeds_view[k] for k in annotated}
            if mode == "every_k":
                result = propagate.every_kth(segmenter, seeds_view.shape, seeds, step=every_k or "auto",
                                             slice_mm=spacing_slice_mm, image=image)
            else:
                result = propagate.propagate_from_seeds(segmenter, seeds_view.shape, seeds, image=image,
                                                        progress=progress, cancelled=cancelled)
        mask = self._from_slices(result.mask, axis)
        report(progress, 1.0, "propagation done")
        return CaseResult(mask, None, {
            "mode": "re-propagate" if outward_only else f"propagate ({mode})", "model": model, "axis": axis,
            "seeds": result.seeds, "segmented": result.segmented, "stop_reasons": result.stop_reasons,
            "predicted_iou": {int(k): round(v, 4) for k, v in result.iou.items()},
            "seconds": round(time.perf_counter() - start, 3), "voxels": int(mask.sum())})

    def refine(self, volume: Volume, mask_kji: np.ndarray, *, positive_ijk=None, negative_ijk=None,
               scribble_kji=None, method: str = "graphcut", model: str = "litemedsam", device: str = "auto",
               window="auto", axis: str = "axial", cache_mb: int = 2048, progress=None, cancelled=None) -> CaseResult:
        """Refine an existing segment with clicks/scribbles; the segment itself is the soft evidence."""
        start = time.perf_counter()
        check(cancelled, "refinement")
        mask_kji = np.asarray(mask_kji, bool)
        base = CaseResult(mask_kji, np.where(mask_kji, 0.9, 0.1).astype(np.float32), {"mode": "refine"})
        outcome = self.refine_result(volume, base, method=method if method != "none" else "graphcut",
                                     positive_ijk=positive_ijk, negative_ijk=negative_ijk, scribble_kji=scribble_kji)
        outcome.report.update(seconds=round(time.perf_counter() - start, 3), voxels=int(outcome.mask_kji.sum()))
        report(progress, 1.0, "refinement done")
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
                axis=options.axis, padding_mm=options.padding_mm, padding_fraction=options.padding_fraction,
                slabs=box.slabs, refine=options.refine,
                mode=options.mode,
                extreme_points_ijk=extreme_ijk if np.all(volume.contains_ijk(extreme_ijk)) else None,
                cache_mb=options.cache_mb,
                progress=scaled(progress, 0.3 + 0.6 * n / max(len(present), 1), 0.3 + 0.6 * (n + 1) / max(len(present), 1)),
                cancelled=cancelled)
        labels, label_ids, overlaps = combine_structures(results, order=present, policy=options.overlap_policy)
        if labels is None:
            labels = np.zeros(volume.shape_kji, np.uint8)
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


def fill_between_slices(mask_kji: np.ndarray, *, axis: str = "axial", progress=None, cancelled=None) -> CaseResult:
    """Slicer-style "fill between slices": morphological contour interpolation between the annotated slices."""
    from .interpolation import interpolate_slices

    check(cancelled, "interpolation")
    mask_kji = np.asarray(mask_kji, bool)
    annotated = np.flatnonzero(np.moveaxis(mask_kji, AXIS_LAYOUT[axis][0], 0).any(axis=(1, 2)))
    if len(annotated) < 2:
        raise ValueError("fill between slices needs the structure drawn on at least two slices")
    filled = interpolate_slices(mask_kji, [int(k) for k in annotated], axis=AXIS_LAYOUT[axis][0])
    report(progress, 1.0, "interpolation done")
    return CaseResult(filled, None, {"mode": "fill between slices", "annotated": annotated.tolist(),
                                     "voxels": int(filled.sum())})


def combine_structures(results: dict, order: list[str], policy: str = "score") -> tuple[np.ndarray, dict, dict]:
    """One label map from per-structure results; overlaps go to the higher model probability (``score``) or the
    earlier structure (``order``), and every contested voxel is counted in the returned report."""
    from .propagate import resolve_overlaps

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
