"""The Session: one structure at a time (segment from a box, propagate, refine), with models and slice embeddings
kept warm across calls. Used by the case runner, the batch, the demo and the Slicer Logic.

Predictors are keyed by a stable identity of the volume (``Volume.key`` when its maker gave one, else a digest of
its voxels), so a second action on the same volume (another structure, a re-run, a click) encodes no slice again,
even when every action hands over a fresh copy of the voxels.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report, scaled
from MedFoundationSegLib.core.volume import Volume, check_finite
from MedFoundationSegLib.runtime.retained_heap import retained_heap
from MedFoundationSegLib.segment import clicks as click_correction
from MedFoundationSegLib.segment import keyslices, propagate, repropagate
from MedFoundationSegLib.segment.exterior import drop_exterior_background
from MedFoundationSegLib.segment.graphcut import GraphCutParams, cut_probability_shift, thin_slice_exclude_reach
from MedFoundationSegLib.segment.predictor import SlicePredictor
from MedFoundationSegLib.segment.segmenter import PredictorSegmenter
from MedFoundationSegLib.workflow import learning, refinement
from MedFoundationSegLib.workflow.box_modes import (
    box_outcome,
    box_padding_mm,
    click_model_route,
    large_box_route,
    run_box_mode,
    slab_boxes,
)
from MedFoundationSegLib.workflow.evidence import Evidence, EvidenceStore
from MedFoundationSegLib.workflow.fusion import fuse_models, fuse_planes, segment_box_ijk
from MedFoundationSegLib.workflow.idle_work import IdleWork, encode_later, while_newest
from MedFoundationSegLib.workflow.options import AXES, SEGMENTATION_MODES, Options
from MedFoundationSegLib.workflow.results import CaseResult

SESSION_DEFAULTS = Options(refine="none")
# How far a click pulls the graph cut when Options.click_reach_mm is None, by slice thickness (docs/benchmarks.md).
CLICK_REACH_MM = {"thick": 14.0, "thin": 8.0}
# The graph cut's smoothness after a correction, by slice thickness (docs/benchmarks.md): 5 shrinks thin-slice clicks.
CLICK_SMOOTHNESS = {"thick": 5.0, "thin": 2.0}
# ... and an exclude click at most this fraction of the structure's equivalent-sphere radius: a full reach emptied a
# small structure's slices around the click (thin) or the small cross-sections near an organ's ends (thick).
EXCLUDE_REACH_PER_RADIUS = {"thick": 0.3, "thin": 0.5}
# Slices a correction's walk re-prompts each way, by slice thickness (segment/clicks.py): it cost Dice on thick slices.
WALK_SLICES = {"thick": 0, "thin": click_correction.MAX_SPREAD_SLICES}
# A segmentation or a click keeps the C heap it used this long (runtime/retained_heap.py) for the next click to reuse.
CLICK_HEAP_LINGER_S = 120.0


def _click_cut_as_smooth_as_first(volume: Volume, o: Options) -> bool:
    """Whether the cut after a click (``CLICK_SMOOTHNESS`` by slice thickness) is as smooth as a segmentation's first
    cut (the default): then the probability the first cut hands on must hold its mask (``refine_result``'s
    ``hold_mask``)."""
    thickness = "thin" if geometry.thick_slice_axis(volume.spacing_mm, o.axis) is None else "thick"
    return CLICK_SMOOTHNESS[thickness] >= GraphCutParams.smoothness


def _resolve(options: Options | None, changes: dict) -> Options:
    return (options or SESSION_DEFAULTS).replace(**changes) if changes else (options or SESSION_DEFAULTS)


class Session:
    """Keeps the last ``max_predictors`` SlicePredictors, one per (volume identity, model, device, window, axis)."""

    def __init__(self, max_predictors: int = 2):
        self.max_predictors = max_predictors
        self._predictors: OrderedDict[tuple, SlicePredictor] = OrderedDict()
        self.evidence = EvidenceStore()  # the model's probability behind the results the engine handed out
        self.idle_work = IdleWork()  # what a worker does between jobs (workflow/idle_work.py)

    def predictor(self, volume: Volume, options: Options | None = None, **changes) -> SlicePredictor:
        o = _resolve(options, changes)
        key = (volume.identity(), volume.array.shape, o.model, o.device,
               json.dumps(o.window, sort_keys=True, default=str), o.axis)
        if key in self._predictors:
            self._predictors.move_to_end(key)
            return self._predictors[key]
        check_finite(volume)
        while len(self._predictors) >= self.max_predictors:
            self._predictors.popitem(last=False)
        self._predictors[key] = SlicePredictor(volume, o.model, axis=o.axis, window=o.window, device=o.device,
                                               cache_bytes=int(o.cache_mb) * 1024 ** 2)
        return self._predictors[key]

    def segmenter(self, volume: Volume, options: Options | None = None, **changes) -> PredictorSegmenter:
        return PredictorSegmenter(self.predictor(volume, options, **changes))

    def slices_encoded(self) -> int:
        """Encoder passes made by the predictors this session still holds."""
        return sum(p.slices_encoded for p in self._predictors.values())

    def _click_model(self, o: Options) -> tuple[str, str | None]:
        """The model clicked slices are asked of, and why not the one asked for (box_modes.click_model_route); the
        segmenting model where this Session keeps one predictor (two models would evict each other's embeddings)."""
        return click_model_route(o) if self.max_predictors > 1 else (o.model, None)

    def ready_click_model(self, volume: Volume, box_ijk, options: Options | None = None, **changes) -> str | None:
        """Queue as idle work (``idle_work``) the loading of the model the clicks on this box will be asked of, when it
        is not the segmenting one, and its encoding of the box's slices, the middle one (where the box was drawn)
        first: the segmentation's answer waits for neither, and nor does a click made after a moment's look.
        Returns that model, or None when clicks go to the segmenting model."""
        o = _resolve(options, changes)
        model = self._click_model(o)[0]
        if model == o.model or o.fusion != "none":  # fused models already fill the predictors a Session keeps
            return None
        box = geometry.slice_box(geometry.check_box_ijk(volume, box_ijk), o.axis)
        load = while_newest(self._predictors, lambda: self.predictor(volume, o.replace(model=model)))
        self.idle_work.replace(encode_later(load, box.first, box.last))
        return model

    # --- one structure ------------------------------------------------------------------------------------------
    @retained_heap(linger_s=CLICK_HEAP_LINGER_S)
    def segment_box(self, volume: Volume, box_ijk, options: Options | None = None, *, slabs=None,
                    extreme_points_ijk=None, prior_head=None, progress: ProgressCallback | None = None,
                    cancelled: CancelCheck | None = None, **changes) -> CaseResult:
        """Segment a structure from its 3D box, slice by slice as ``options.mode`` says (SEGMENTATION_MODES), then
        refine it when ``options.refine`` asks. ``options.padding_fraction`` caps the padding at that fraction of
        the box's smaller in-plane side (a small structure's localized box is padded less). With ``prior_head`` (a
        ``StructureHead`` from earlier volumes) and ``options.learn``, the model decodes with the head's adapted
        decoder layers (one plane, one model), the walk tells the structure from the tissue beside it by its
        intensity in earlier volumes, the structure's shape is blended into its probability and, for a
        model whose cut is not shifted, the head adjusted to this volume predicts the box's slices, before the
        refinement; the result's ``head`` holds this mask's shape too (workflow/learning.py)."""
        o = _resolve(options, changes)
        start = time.perf_counter()
        if o.mode not in SEGMENTATION_MODES:
            raise ValueError(f"unknown segmentation mode {o.mode!r}; use {', '.join(SEGMENTATION_MODES)}")
        box_ijk = geometry.check_box_ijk(volume, box_ijk)
        learned = prior_head if o.learn else None
        looks = None if learned is None else learned.atlas_appearance
        if o.fusion == "planes":
            parts = [self._segment_along(volume, box_ijk, o.replace(axis=axis), slabs,
                                         scaled(progress, n / 3, (n + 1) / 3), cancelled, looks)
                     for n, axis in enumerate(AXES)]
            outcome = fuse_planes(parts)
        elif o.fusion == "models" and o.fusion_model != o.model:
            parts = [self._segment_along(volume, box_ijk, o.replace(model=model), slabs,
                                         scaled(progress, n / 2, (n + 1) / 2 * 0.9), cancelled, looks)
                     for n, model in enumerate((o.model, o.fusion_model))]
            same = parts[0].report["model"] == parts[1].report["model"]  # a large box routes both to one model
            outcome = parts[0] if same else fuse_models(volume, parts, box_ijk)
        else:
            with learning.decoding_as_learned(lambda: self.predictor(volume, o), learned):
                outcome = self._segment_along(volume, box_ijk, o, slabs, progress, cancelled, looks)
        shift = cut_probability_shift(outcome.report.get("model"))
        if learned is not None:
            report(progress, 0.9, "adding what earlier volumes taught about the structure")
            outcome = learning.add_learned(lambda model: self.segmenter(volume, o.replace(model=model)), outcome,
                                           learned, volume, box_ijk, o.axis, use_head=not shift)
        if o.refine != "none":
            check(cancelled, "refinement")
            report(progress, 0.95, f"refining ({o.refine})")
            outcome = self.refine_result(volume, outcome, method=o.refine, box_ijk=box_ijk,
                                         extreme_points_ijk=extreme_points_ijk, probability_shift=shift,
                                         hold_mask=_click_cut_as_smooth_as_first(volume, o),
                                         exact_slices_axis=geometry.slice_frame(o.axis).array_axis
                                         if o.exact_range else None)
        if learned is not None and o.head_shape and (outcome.head or learned.volumes):  # for a caller storing heads:
            outcome.head = outcome.head or learned.to_arrays()  # the head adjusted here, else the prior's, with this
            outcome = learning.with_shape(outcome, learned, box_ijk, volume.array)  # mask's shape (not a shape alone)
        outcome.report["seconds"] = round(time.perf_counter() - start, 3)
        outcome.report["voxels"] = int(outcome.mask_kji.sum())
        report(progress, 1.0, "done")
        return outcome

    def _segment_along(self, volume: Volume, box_ijk: np.ndarray, o: Options, slabs, progress, cancelled,
                       learned_appearance=None) -> CaseResult:
        """The model's masks along ``o.axis`` (large boxes routed, see large_box_route), before refinement;
        ``learned_appearance``: the structure's intensity in earlier volumes (``run_box_mode``)."""
        o, large_box = large_box_route(volume, box_ijk, o)
        click_model = self._click_model(o)[0]  # it answers a drawn box's middle slice, the box's own; loaded first,
        # so that the segmenting model's predictor stays the newest, which the click model's idle work expects
        click_segmenter = self.segmenter(volume, o.replace(model=click_model)) \
            if o.exact_range and o.mode == "box_guided" and o.fusion == "none" and click_model != o.model else None
        segmenter = self.segmenter(volume, o)
        box = geometry.slice_box(box_ijk, o.axis)
        padding_mm = 0.0 if large_box else box_padding_mm(volume, box, o)
        result = run_box_mode(volume, segmenter, box, o, padding_mm, slab_boxes(slabs, o.axis), progress, cancelled,
                              learned_appearance, click_segmenter)
        outcome = box_outcome(segmenter, result, box, o, padding_mm)
        if click_segmenter is not None:
            outcome.report["middle_slice_model"] = click_model
        if large_box is not None:
            window = segmenter.predictor.window
            kept, large_box["exterior_voxels_removed"] = drop_exterior_background(
                volume.array, outcome.mask_kji, box_ijk, window.low + 0.02 * window.width)
            outcome.probability_kji[outcome.mask_kji & ~kept] = 0.0
            outcome.mask_kji = kept
            outcome.report["large_box"] = large_box
        return outcome

    def propagate(self, volume: Volume, seed_kji: np.ndarray, options: Options | None = None, *,
                  slice_index: int | None = None, outward_only: bool = False,
                  progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
                  **changes) -> CaseResult:
        """Propagate a structure drawn on some slices to the rest of it, both ways, with stop rules.
        The seeds are the non-empty slices of ``seed_kji`` (or only ``slice_index``). ``outward_only``: the user
        corrected ``slice_index``; keep everything between it and the other seeds and redo only the slices beyond."""
        o = _resolve(options, changes)
        mode = o.propagation_mode()
        start = time.perf_counter()
        seeds_view = geometry.to_slices(np.asarray(seed_kji, bool), o.axis)
        annotated = [int(k) for k in np.flatnonzero(seeds_view.any(axis=(1, 2)))]
        if not annotated:
            raise ValueError("nothing to propagate: the segment is empty")
        if slice_index is not None and not seeds_view[int(slice_index)].any():
            raise ValueError(f"slice {slice_index} of the segment is empty: draw the structure there first")
        if outward_only and slice_index is None:
            raise ValueError("re-propagation needs the edited slice index")
        segmenter = self.segmenter(volume, o)
        image = geometry.to_slices(volume.array, o.axis)
        if outward_only:
            others = [k for k in annotated if k != int(slice_index)]
            previous = propagate.PropagationResult(mask=seeds_view.copy(), iou={k: 1.0 for k in annotated},
                                                   segmented=annotated, stop_reasons={}, seeds=others or [slice_index])
            result = repropagate.repropagate_from_edit(segmenter, previous, int(slice_index),
                                                     seeds_view[int(slice_index)], image=image, progress=progress,
                                                     cancelled=cancelled)
        else:
            seeds = ({int(slice_index): seeds_view[int(slice_index)]} if slice_index is not None
                     else {k: seeds_view[k] for k in annotated})
            if mode == "every_k":
                slice_mm = float(np.asarray(volume.spacing_mm)[geometry.slice_frame(o.axis).ijk_axis])
                result = keyslices.every_kth(segmenter, seeds_view.shape, seeds, step=o.every_k or "auto",
                                             slice_mm=slice_mm, image=image, progress=progress, cancelled=cancelled)
            else:
                result = propagate.propagate_from_seeds(segmenter, seeds_view.shape, seeds, image=image,
                                                        progress=progress, cancelled=cancelled)
        mask = geometry.from_slices(result.mask, o.axis)
        report(progress, 1.0, "propagation done")
        return CaseResult(mask, None, {
            "mode": "re-propagate" if outward_only else f"propagate ({mode})", "model": o.model, "axis": o.axis,
            "seeds": result.seeds, "segmented": result.segmented, "stop_reasons": result.stop_reasons,
            "predicted_iou": {int(k): round(v, 4) for k, v in result.iou.items()},
            "seconds": round(time.perf_counter() - start, 3), "voxels": int(mask.sum())}
            | ({"appearance": result.appearance} if result.appearance else {}))

    @retained_heap(linger_s=CLICK_HEAP_LINGER_S)
    def correct(self, volume: Volume, shown: CaseResult, box_ijk, clicks_kji: list[tuple[tuple[int, int, int], bool]],
                options: Options | None = None, *, new_clicks: int = 1, tuning: dict | None = None,
                prior_head=None, progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
                **changes) -> CaseResult:
        """Corrective clicks on a structure the user sees (``shown``: its mask and the model probability behind it).

        The slices of the last ``new_clicks`` clicks are asked again with the box, their clicks and the shown mask, by
        ``options.click_model`` (one that reads points); on thin slices each correction spreads outwards until it
        agrees with the shown masks (segment/clicks.py, ``WALK_SLICES``); then, unless ``options.refine`` is "none", a
        3D graph cut holds every click. Clicks are ((k, j, i), positive) voxels from any view: each corrects the slice
        of the model's axis it lies on. An include click outside the box grows the box past it (the report's
        ``correction.box_ijk``). With ``options.learn`` a structure head fitted on the corrected mask and the clicks
        (warm-started from ``prior_head``) predicts the box's slices before the graph cut (segment/head_learning.py);
        the result carries it in ``head``. ``tuning``: keyword arguments of ``segment.clicks.correct_with_clicks``."""
        o = _resolve(options, changes)
        start = time.perf_counter()
        if not clicks_kji:
            raise ValueError("no clicks to correct with")
        box_ijk = geometry.check_box_ijk(volume, box_ijk)
        upper = np.array(volume.shape_kji) - 1
        for point, _ in clicks_kji:
            if np.any(np.asarray(point) < 0) or np.any(np.asarray(point) > upper):
                raise ValueError(f"the click {tuple(int(v) for v in point)} (k, j, i) lies outside the volume "
                                 f"(0..{upper.tolist()})")
        given_box_ijk, box_ijk = box_ijk, geometry.box_holding_clicks_ijk(
            box_ijk, [p[::-1] for p, pos in clicks_kji if pos], o.axis, volume.shape_kji)
        frame = geometry.slice_frame(o.axis)
        box = geometry.slice_box(box_ijk, o.axis)
        others = [axis for axis in range(3) if axis != frame.array_axis]
        clicks = [click_correction.Click((int(p[frame.array_axis]), int(p[others[0]]), int(p[others[1]])), bool(pos))
                  for p, pos in clicks_kji]
        probability = shown.mask_kji.astype(np.float32) if shown.probability_kji is None else shown.probability_kji
        segmenter = self.segmenter(volume, o)
        click_model, click_note = self._click_model(o)
        click_segmenter = self.segmenter(volume, o.replace(model=click_model)) if click_model != o.model else None
        report(progress, 0.1, "re-prompting the clicked slice")
        thick_axis = geometry.thick_slice_axis(volume.spacing_mm, o.axis)  # the walk and the graph cut's reach
        corrected = click_correction.correct_with_clicks(
            segmenter, geometry.to_slices(shown.mask_kji, o.axis), geometry.to_slices(probability, o.axis), box.xyxy,
            (box.first, box.last), clicks, sorted({c.srk[0] for c in clicks[-max(int(new_clicks), 1):]}),
            click_segmenter=click_segmenter, cancelled=cancelled, **{"max_spread_slices": WALK_SLICES["thin" if thick_axis is None else "thick"], **(tuning or {})})
        outcome = CaseResult(geometry.from_slices(corrected.mask, o.axis),
                             geometry.from_slices(corrected.probability, o.axis),
                             dict(shown.report, correction={"clicks": len(clicks), "box_ijk": box_ijk.tolist(),
                                                            "changed": corrected.changed,
                                                            "stop_reasons": corrected.stop_reasons,
                                                            "click_model": click_note or click_model}))
        if o.learn:
            report(progress, 0.5, "learning the structure from the shown mask and the clicks")
            outcome = learning.apply_head(segmenter, outcome, box, o.axis, o.model, clicks, prior=prior_head,
                                          shown_view=corrected.mask)
        if o.refine != "none":
            check(cancelled, "refinement")
            report(progress, 0.7, f"refining ({o.refine}) with {len(clicks)} clicks")
            outcome = self._refine_correction(volume, outcome, box_ijk, clicks_kji, o, thick_axis)
        if o.learn and o.head_shape:  # the head's shape and atlases, for a caller that stores the head
            outcome = learning.with_shape(outcome, prior_head, given_box_ijk, volume.array)
        outcome.report.update(seconds=round(time.perf_counter() - start, 3), voxels=int(outcome.mask_kji.sum()))
        report(progress, 1.0, "correction done")
        return outcome

    def _refine_correction(self, volume: Volume, outcome: CaseResult, box_ijk, clicks_kji, o: Options,
                           thick_axis: int | None) -> CaseResult:
        """The refinement after a correction, with every click as a hard constraint. On thick slices an exclude
        click pulls only on its own slice (there the next slice is another cross-section, and what it loses the
        re-prompted model has already decided) and a click reaches farther; on thin slices clicks pull in 3D and the
        cut is less smooth (``CLICK_SMOOTHNESS``). An exclude click reaches at most a fraction of the structure's
        radius (``EXCLUDE_REACH_PER_RADIUS``), and no farther than an include click, unless the segment's model
        over-reaches on thin slices (``graphcut.thin_slice_exclude_reach``). The cut keeps to the slices of the box
        and of the mask."""
        positive = [p[::-1] for p, pos in clicks_kji if pos]
        negative = [p[::-1] for p, pos in clicks_kji if not pos]
        thickness = "thin" if thick_axis is None else "thick"
        if o.click_reach_mm is not None:
            reach_mm = exclude_reach_mm = o.click_reach_mm
        else:
            reach_mm = CLICK_REACH_MM[thickness]
            own = thin_slice_exclude_reach(outcome.report.get("model", o.model)) if thick_axis is None else None
            per_radius, farthest_mm = own or (EXCLUDE_REACH_PER_RADIUS[thickness], reach_mm)
            exclude_reach_mm = min(farthest_mm, per_radius *
                                   geometry.equivalent_radius_mm(outcome.mask_kji, volume.spacing_mm))
        box_ijk = geometry.box_holding_slices_ijk(box_ijk, outcome.mask_kji, o.axis)
        refined = self.refine_result(volume, outcome, method=o.refine, box_ijk=box_ijk,
                                     positive_ijk=np.array(positive, float) if positive else None,
                                     negative_ijk=np.array(negative, float) if negative else None,
                                     click_reach_mm=reach_mm, exclude_reach_mm=exclude_reach_mm,
                                     exclude_pull_axis=thick_axis, smoothness=CLICK_SMOOTHNESS[thickness],
                                     exact_slices_axis=geometry.slice_frame(o.axis).array_axis)
        return CaseResult(refined.mask_kji, outcome.probability_kji, outcome.report, head=outcome.head)

    def learn_signed(self, volume: Volume, mask_kji: np.ndarray, box_ijk, options: Options | None = None, *,
                     prior_head=None, adapt_decoder: bool = False, **changes):
        """The structure head of a mask the user signed in its box, warm-started from ``prior_head``, to store per
        structure (io/head_store.py) so the next volume starts from it; only the shape where the head cannot learn it.
        ``adapt_decoder``: the model's decoder output layers learn the mask too (workflow/learning.py)."""
        o = _resolve(options, changes)
        if not np.asarray(mask_kji, bool).any():
            raise ValueError("nothing to learn from: the segment is empty")
        box_ijk = geometry.check_box_ijk(volume, box_ijk)
        return learning.learn_signed(self.segmenter(volume, o), mask_kji, box_ijk, o.axis, o.model, prior=prior_head,
                                     image_kji=volume.array, adapt_decoder=adapt_decoder)

    def refine(self, volume: Volume, mask_kji: np.ndarray, options: Options | None = None, *, positive_ijk=None,
               negative_ijk=None, scribble_kji=None, evidence: Evidence | None = None, prior_head=None,
               progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
               **changes) -> CaseResult:
        """Refine an existing segment with clicks/scribbles. The soft evidence is ``evidence.probability_kji`` (the
        model's probability behind the segment, ``EvidenceStore.recall``), else the segment itself (0.9 inside, 0.1
        outside); the clicks correct it in ``evidence.box_ijk`` when known, else in the segment's box.

        With clicks and ``options.reprompt_clicks`` (and no scribble) the model is re-prompted first (``correct``) on
        the slices of the clicks the segment contradicts (the panel sends all its clicks, also those of earlier
        refinements), inside the segment's box grown to hold the include clicks."""
        o = _resolve(options, changes)
        start = time.perf_counter()
        check(cancelled, "refinement")
        mask_kji = np.asarray(mask_kji, bool)
        probability = np.where(mask_kji, 0.9, 0.1).astype(np.float32) if evidence is None else \
            np.asarray(evidence.probability_kji, np.float32)
        if probability.shape != mask_kji.shape:
            raise ValueError(f"the probability has shape {probability.shape}; the segment {mask_kji.shape}")
        base = CaseResult(mask_kji, probability, {"mode": "refine", "evidence": "bare mask" if evidence is None
                                                  else "model probability"})
        clicks = [(tuple(int(round(v)) for v in np.asarray(point)[::-1]), positive)
                  for points, positive in ((positive_ijk, True), (negative_ijk, False))
                  for point in (np.zeros((0, 3)) if points is None else np.atleast_2d(points))]
        if clicks and o.reprompt_clicks and scribble_kji is None and mask_kji.any():
            new = [click for click in clicks if mask_kji[click[0]] != click[1]]  # earlier ones were hard constraints
            clicks = [click for click in clicks if click not in new] + new
            box_ijk = evidence.box_ijk if evidence is not None and evidence.box_ijk is not None else \
                segment_box_ijk(volume, mask_kji, clicks, slice_axis=geometry.slice_frame(o.axis).array_axis)
            outcome = self.correct(volume, base, box_ijk, clicks, o,
                                   new_clicks=len(new), prior_head=prior_head, progress=progress,
                                   cancelled=cancelled,
                                   refine=o.refine if o.refine != "none" else "graphcut")
            outcome.report.update(mode="refine", seconds=round(time.perf_counter() - start, 3))
            return outcome
        outcome = self.refine_result(volume, base, method=o.refine if o.refine != "none" else "graphcut",
                                     positive_ijk=positive_ijk, negative_ijk=negative_ijk, scribble_kji=scribble_kji,
                                     click_reach_mm=o.click_reach_mm, progress=progress, cancelled=cancelled)
        outcome.report.update(seconds=round(time.perf_counter() - start, 3), voxels=int(outcome.mask_kji.sum()))
        report(progress, 1.0, "refinement done")
        return outcome

    refine_result = staticmethod(refinement.refine_result)
