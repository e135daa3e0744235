"""A box's slices through the model in one of the box modes, encoding them as the walk reaches them.

Why encode as the walk goes: where the encoder takes one slice per call (CPU) batching gains nothing, and a slice
segmented right after its encoding is shown at once (core.progress.show_slice) instead of after the whole box was
encoded. The slices the walk did not need are encoded afterwards, so the clicks that follow answer without encoding.
Where the encoder batches (CUDA) the box is encoded first, in batches.
"""

from __future__ import annotations

import numpy as np

from MedFoundationSegLib.core import geometry, weights
from MedFoundationSegLib.core.progress import report, scaled
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.segment import keyslices, propagate, reference
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult


def run_box_mode(volume, segmenter, box: geometry.SliceBox, o: Options, padding_mm: float, slab_boxes, progress,
                 cancelled, learned_appearance=None, click_segmenter=None) -> propagate.PropagationResult:
    """The propagation result of ``o.mode`` over ``box`` (slice frame of ``o.axis``); ``learned_appearance``: the
    structure's (mean, spread) in earlier volumes, for the box-guided walk (``propagate.box_guided``);
    ``click_segmenter``: the model that answers a drawn box's middle slice (``click_model_route``; ``MiddleAskedOf``)."""
    predictor = segmenter.predictor
    frame = geometry.slice_frame(o.axis)
    spacing = np.asarray(volume.spacing_mm)
    pixel_mm = (spacing[frame.x_ijk], spacing[frame.y_ijk])
    shape = geometry.to_slices(volume.array, o.axis).shape
    if o.mode == "every_k":  # only the key slices are encoded
        step = int(o.every_k or keyslices.auto_step(box.last - box.first + 1, float(spacing[frame.ijk_axis])))
        predictor.encode_slices(keyslices.box_grid(box.first, box.last, step), progress=scaled(progress, 0.0, 0.7),
                                cancelled=cancelled)
        return keyslices.box_every_kth(segmenter, shape, box.as_tuple(), step=step, spacing_mm=pixel_mm,
                                       pad_mm=padding_mm, slabs=slab_boxes, progress=scaled(progress, 0.7, 0.95),
                                       cancelled=cancelled)
    count = box.last - box.first + 1
    as_needed = predictor.encodes_one_slice_per_call
    if not as_needed:
        report(progress, 0.0, f"encoding {count} slices")
        predictor.encode_range(box.first, box.last, progress=scaled(progress, 0.0, 0.7), cancelled=cancelled)
    walk = scaled(progress, 0.0, 0.85) if as_needed else scaled(progress, 0.7, 0.95)
    with predictor.heap_scope():
        walker = segmenter if click_segmenter is None else propagate.MiddleAskedOf(segmenter, click_segmenter)
        result = _walk(volume, walker, shape, box, o, pixel_mm, padding_mm, slab_boxes, walk, cancelled,
                       learned_appearance)
    if as_needed:
        predictor.encode_range(box.first, box.last, progress=scaled(progress, 0.85, 0.95), cancelled=cancelled)
    return result


def _walk(volume, segmenter, shape, box: geometry.SliceBox, o: Options, pixel_mm, padding_mm: float, slab_boxes,
          progress, cancelled, learned_appearance=None) -> propagate.PropagationResult:
    if o.mode == "box":
        return propagate.box_per_slice(segmenter, shape, box.as_tuple(), spacing_mm=pixel_mm, pad_mm=padding_mm,
                                       slabs=slab_boxes, progress=progress, cancelled=cancelled)
    if o.mode == "box_guided":
        # The appearance rule: a localized box may reach past the structure's end (lung above a liver's dome), where
        # the walk ends; in a drawn box the model answers again, and a last resort keeps only tissue like the middle
        # slice's (a thin structure that leaves the box, where the model answers with the fat beside it).
        image = geometry.to_slices(volume.array, o.axis)
        return propagate.box_guided(segmenter, shape, box.as_tuple(), spacing_mm=pixel_mm, pad_mm=padding_mm,
                                    slabs=slab_boxes, exact_limits=o.exact_range, image=image,
                                    learned_appearance=learned_appearance, progress=progress, cancelled=cancelled)
    if o.mode == "reference":
        x0, y0, x1, y1 = box.xyxy
        return reference.reference_litemedsam(segmenter, shape, (x0, y0, box.first, x1, y1, box.last),
                                              progress=progress, cancelled=cancelled)
    seeds = {(box.first + box.last) // 2: np.array(box.xyxy)}  # guided: stop rules may leave the box
    return propagate.propagate_from_seeds(segmenter, shape, seeds, limits=(box.first, box.last),
                                          exact_limits=o.exact_range, image=geometry.to_slices(volume.array, o.axis),
                                          progress=progress, cancelled=cancelled)


def large_box_route(volume: Volume, box_ijk: np.ndarray, o: Options) -> tuple[Options, dict | None]:
    """Options for a box covering at least ``o.large_box_fraction`` of its slices: ``o.large_box_model`` when its
    weights are cached, no padding; with what was decided (None for an ordinary box)."""
    frame = geometry.slice_frame(o.axis)
    shape_ijk = np.array(volume.shape_kji[::-1])
    extent = np.asarray(box_ijk[1]) - np.asarray(box_ijk[0]) + 1
    fraction = float(extent[frame.x_ijk] * extent[frame.y_ijk] / (shape_ijk[frame.x_ijk] * shape_ijk[frame.y_ijk]))
    if not o.large_box_model or fraction < o.large_box_fraction:
        return o, None
    decision = {"box_fraction": round(fraction, 3), "model": o.model}
    if o.large_box_model != o.model:
        if _weights_cached(o.large_box_model):
            o = o.replace(model=o.large_box_model)
            decision["model"] = o.model
        else:
            decision["note"] = f"{o.large_box_model} weights are not cached; {o.model} used"
    return o, decision


def click_model_route(o: Options) -> tuple[str, str | None]:
    """(model, note): the model a clicked slice is asked again with (``Options.click_model``) and, when "auto" falls
    back to the segmenting model for want of weights, why."""
    if o.click_model != "auto":
        return o.click_model or o.model, None
    wanted = registry_click_model(o.model)
    if not wanted:
        return o.model, None
    if _weights_cached(wanted):
        return wanted, None
    return o.model, f"{wanted} weights are not cached; the clicked slices were asked again with {o.model}"


def registry_click_model(model: str) -> str | None:
    """The registry's ``prompting.click_model`` of ``model``: another model that reads point prompts, or None."""
    wanted = weights.model_setting(model, "prompting", "click_model")
    return wanted if wanted and wanted != model else None


def _weights_cached(model: str) -> bool:
    return weights.cached_status(model)[1].startswith("ok")


def box_outcome(segmenter, result: propagate.PropagationResult, box: geometry.SliceBox, o: Options,
                padding_mm: float) -> CaseResult:
    """The CaseResult of a box mode's propagation result: the mask and the model's probability in the volume's
    (k, j, i) frame, and the report of how they were made."""
    probability_view = segmenter.probability_volume(result.segmented)
    for k in result.interpolated:  # no model output there: the interpolated contour is moderate evidence
        probability_view[k] = np.where(result.mask[k], 0.8, 0.2)
    return CaseResult(geometry.from_slices(result.mask, o.axis), geometry.from_slices(probability_view, o.axis), {
        "mode": o.mode, "model": o.model, "axis": o.axis, "slices": [box.first, box.last],
        "segmented": result.segmented, "predicted_iou": {int(k): round(v, 4) for k, v in result.iou.items()},
        "stop_reasons": result.stop_reasons, "interpolated": result.interpolated, "padding_mm": padding_mm,
        "slices_encoded": segmenter.predictor.slices_encoded}
        | ({"appearance": result.appearance} if result.appearance else {}))


def box_padding_mm(volume: Volume, box: geometry.SliceBox, o: Options) -> float:
    """The padding of ``box``: ``o.padding_mm``, capped at ``o.padding_fraction`` of its smaller in-plane side."""
    if o.padding_fraction is None:
        return float(o.padding_mm)
    frame = geometry.slice_frame(o.axis)
    spacing = np.asarray(volume.spacing_mm)
    side_mm = min((box.cols[1] - box.cols[0] + 1) * spacing[frame.x_ijk],
                  (box.rows[1] - box.rows[0] + 1) * spacing[frame.y_ijk])
    return min(float(o.padding_mm), float(o.padding_fraction) * side_mm)


def slab_boxes(slabs, axis: str) -> list:
    """SPL slabs as (first, last, xyxy) in the slice frame of ``axis``."""
    out = []
    for slab in slabs or []:
        if getattr(slab, "box_ijk", None) is not None:
            part = geometry.slice_box(slab.box_ijk, axis)
            out.append((part.first, part.last, part.xyxy))
    return out
