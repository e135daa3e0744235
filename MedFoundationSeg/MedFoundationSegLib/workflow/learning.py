"""The structure head in the Session's actions: after corrective clicks (learning within a volume), on a first
segmentation when a head from earlier volumes exists, and from a mask the user signed (learning across a dataset).

Heads travel between the Slicer side, the engine and the store as plain arrays (``StructureHead.to_arrays``) or as
their JSON form here, never as a path or a pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.io.head_store import HeadStoreError, json_to_head_arrays, with_head_wire_arrays
from MedFoundationSegLib.segment import atlas_prior, decoder_adaptation, head_learning, shape_prior
from MedFoundationSegLib.segment.structure_head import HeadError, StructureHead, as_head_arrays
from MedFoundationSegLib.workflow.results import CaseResult


def apply_head(segmenter, outcome: CaseResult, box: geometry.SliceBox, axis: str, model: str, clicks=(), *,
               prior: StructureHead | None = None, shown_view: np.ndarray | None = None) -> CaseResult:
    """``outcome`` with the head's probability on the box's slices: the head fitted on what the user sees
    (``shown_view``, else the outcome's mask) and the clicks (``segment.clicks.Click`` in the slice view), warm-started
    from ``prior``. The mask is the probability above 0.5 (the clicks hold); the head's arrays come back in ``head``.
    A head that cannot reproduce the mask it learned from (``LearnedHead.usable``) changes nothing."""
    mask_view = geometry.to_slices(outcome.mask_kji, axis) if shown_view is None else shown_view
    probability = outcome.probability_kji if outcome.probability_kji is not None else \
        outcome.mask_kji.astype(np.float32)
    prior = weights_prior(prior)
    learned = head_learning.learn_in_box(segmenter.predictor, mask_view, box.xyxy, (box.first, box.last), clicks,
                                         model, prior=prior)
    report = dict(outcome.report, head={"slices": list(learned.slices), "cells": learned.head.cells,
                                        "prior_volumes": prior.volumes if prior else 0,
                                        "agreement": round(learned.agreement, 4), "used": learned.usable})
    if not learned.usable:  # the model's masks stand; nothing worth storing was learned
        return CaseResult(outcome.mask_kji, outcome.probability_kji, report)
    blended = head_learning.blend(geometry.to_slices(probability, axis), learned, clicks,
                                  adds_from=head_learning.head_adds_from(model))
    return CaseResult(geometry.from_slices(blended > 0.5, axis), geometry.from_slices(blended, axis), report,
                      head=learned.head.to_arrays())


def ready_cells(segmenter, box: geometry.SliceBox) -> None:
    """The box's embedding cells converted for the structure head now, after a segmentation, so that the first click
    on it (which fits the head over every slice of the box) does not wait for them: ``head_learning.CellWindows``
    keeps them while the box's cell window and the slices' embeddings stay the same. Only slices already encoded are
    converted: this encodes nothing."""
    predictor = segmenter.predictor
    encoded = [k for k in range(box.first, box.last + 1) if predictor.is_encoded(k)]
    if encoded:
        windows = head_learning.cell_windows(predictor, box.xyxy, encoded[0])
        for k in encoded:
            windows.window(k)


def start_from_prior(segmenter_for, outcome: CaseResult, box: geometry.SliceBox, axis: str,
                     prior: StructureHead) -> CaseResult:
    """A first segmentation adjusted by a head from earlier volumes (``apply_head`` without clicks); unchanged when the
    head was learned with another model than the one that segmented (a large box may route to another model)."""
    model = outcome.report.get("model")
    if prior.model != model:
        return CaseResult(outcome.mask_kji, outcome.probability_kji,
                          dict(outcome.report, head={"skipped": f"the stored head is for {prior.model}, not {model}"}),
                          head=outcome.head)
    return apply_head(segmenter_for(model), outcome, box, axis, model, prior=prior)


def learn_signed(segmenter, mask_kji: np.ndarray, box_ijk, axis: str, model: str, *,
                 prior: StructureHead | None = None, image_kji: np.ndarray | None = None,
                 adapt_decoder: bool = False) -> StructureHead:
    """The head of a mask the user signed in ``box_ijk``, warm-started from ``prior``: it has learned from one volume
    more (a volume it learned before counts once), and its shape (segment/shape_prior.py) and, with ``image_kji``,
    its atlases (segment/atlas_prior.py) hold the mask too. Where the head cannot reproduce the mask
    (``head_learning.MIN_AGREEMENT``: a structure too fine for the embedding's cells) the prior's weights stay, or,
    without a prior, the head holds only the shape (``volumes`` 0: its weights are never used). With
    ``adapt_decoder`` the decoder's output layers learn the mask too (segment/decoder_adaptation.py), from the
    prior's; without, the prior's layers (if any) stay as they were."""
    box = geometry.slice_box(box_ijk, axis)
    mask_view = geometry.to_slices(np.asarray(mask_kji, bool), axis)
    learned = head_learning.learn_in_box(segmenter.predictor, mask_view, box.xyxy, (box.first, box.last), (), model,
                                         prior=weights_prior(prior))
    shape, again = _next_shape(prior, mask_kji, box_ijk, image_kji)
    if learned.agreement >= head_learning.MIN_AGREEMENT:
        head = dataclasses.replace(learned.head, volumes=_volumes_after(prior, again))
    elif prior is not None:
        head = prior
    else:
        head = dataclasses.replace(learned.head, volumes=0)
    decoder = None if prior is None else prior.decoder
    if adapt_decoder:
        decoder = decoder_adaptation.adapt(segmenter.predictor, mask_view, box.xyxy, box.first, box.last, start=decoder)
    return dataclasses.replace(head, decoder=decoder, **shape)


def decoding_as_learned(predictor_for, prior: StructureHead | None):
    """A block in which the predictor (``predictor_for()``, made only when needed) decodes with ``prior``'s adapted
    decoder layers (segment/decoder_adaptation.py); no change where the head holds none."""
    if prior is None or prior.decoder is None:
        return contextlib.nullcontext()
    predictor = predictor_for()
    try:
        decoder = decoder_adaptation.with_layers(predictor.model.mask_decoder, prior.decoder)
    except decoder_adaptation.DecoderAdaptationError as error:
        raise HeadError(str(error)) from None
    return predictor.decoding_with(decoder)


def weights_prior(prior: StructureHead | None) -> StructureHead | None:
    """``prior`` where its weights learned from at least one volume, else None (a head holding only a shape)."""
    return prior if prior is not None and prior.volumes > 0 else None


def _volumes_after(prior: StructureHead | None, learned_before: bool) -> int:
    """The head's count of volumes after learning one: the prior's, plus one unless the prior had learned it."""
    return (prior.volumes if prior is not None else 0) + (0 if learned_before else 1)


def _next_shape(prior: StructureHead | None, mask_kji: np.ndarray, box_ijk, image_kji) -> tuple[dict, bool]:
    """The head's shape fields after one volume more, and whether the prior had learned this volume before: the
    prior's shape, if it has one, averaged with ``mask_kji`` in ``box_ijk``; with ``image_kji``, the prior's atlases
    and this volume's. A volume the prior's atlases already hold (learned again) replaces its atlas and leaves the
    mean shape as it was: no volume counts twice."""
    count = prior.shape_volumes if prior is not None and prior.shape is not None else 0
    source = None if image_kji is None else atlas_prior.volume_digest(image_kji)
    again = bool(count) and source is not None and atlas_prior.holds_source(prior.atlas_sources, source)
    if again:
        fields = {"shape": prior.shape, "shape_volumes": count}
    else:
        fields = {"shape": shape_prior.updated(prior.shape if count else None, count, mask_kji, box_ijk),
                  "shape_volumes": count + 1}
    if image_kji is not None:
        atlases = None if prior is None else (prior.atlas_images, prior.atlas_masks, prior.atlas_sources,
                                              prior.atlas_appearance)
        images, masks, sources, looks = atlas_prior.appended(
            atlases, atlas_prior.image_grid(image_kji, box_ijk), atlas_prior.mask_grid(mask_kji, box_ijk), source,
            atlas_prior.appearance(image_kji, mask_kji))
        fields.update(atlas_images=images, atlas_masks=masks, atlas_sources=sources, atlas_appearance=looks)
    return fields, again


def add_learned(segmenter_for, outcome: CaseResult, prior: StructureHead, volume, box_ijk, axis: str, *,
                use_head: bool) -> CaseResult:
    """A first segmentation (decoded with the prior's adapted decoder layers where it holds them,
    ``decoding_as_learned``) with the rest of what earlier volumes taught: with ``use_head`` (a model whose cut is not
    shifted: the head's probability replaces what a shifted cut was measured on) the head adjusted to this volume
    (``start_from_prior``), then the structure's shape (``add_shape``); the report names each."""
    if use_head and prior.volumes:
        outcome = start_from_prior(segmenter_for, outcome, geometry.slice_box(box_ijk, axis), axis, prior)
    outcome = add_shape(outcome, prior, box_ijk, volume.array, volume.spacing_mm[::-1])
    if prior.decoder is not None:
        outcome.report["decoder"] = "adapted to the structure by signed volumes"
    return outcome


def add_shape(outcome: CaseResult, prior: StructureHead, box_ijk, image_kji: np.ndarray,
              spacing_kji_mm) -> CaseResult:
    """A first segmentation with the shape of earlier volumes blended into its probability (unchanged when the head
    holds no shape): their atlases carried onto this image where the head keeps them, else their mean shape in the
    box. The mask is the blend above 0.5."""
    if prior.shape is None or outcome.probability_kji is None:
        return outcome
    shape, source = prior.shape, "mean shape in the box"
    if prior.atlas_images is not None:
        shape = atlas_prior.carried_shape(prior.atlas_images, prior.atlas_masks, image_kji, box_ijk, spacing_kji_mm)
        source = f"registered atlases ({len(prior.atlas_images)})"
    blended = shape_prior.blend(outcome.probability_kji, shape, prior.shape_volumes, box_ijk)
    return CaseResult(blended >= 0.5, blended,
                      dict(outcome.report, shape_prior={"volumes": prior.shape_volumes, "from": source}),
                      head=outcome.head)


def with_shape(outcome: CaseResult, prior: StructureHead | None, box_ijk, image_kji: np.ndarray) -> CaseResult:
    """``outcome`` whose learned head (if any) also holds the structure's shape and atlases: the prior's, with this
    outcome's mask in ``box_ijk`` (the box the user gave), and counts this volume once more than the prior did,
    unless the prior had learned it before. The caller stores the head; each later action on the same volume
    replaces it (with the same prior), so the volume's last mask is the one that counts."""
    if outcome.head is None:
        return outcome
    fields, again = _next_shape(prior, outcome.mask_kji, box_ijk, image_kji)
    counts = {"shape_volumes": np.array(fields["shape_volumes"]), "volumes": np.array(_volumes_after(prior, again))}
    layers = {} if prior is None or prior.decoder is None else as_head_arrays(prior.decoder)
    head = layers | dict(outcome.head, **(fields | counts))  # decoder layers learn only from signed volumes
    return CaseResult(outcome.mask_kji, outcome.probability_kji, outcome.report, head=head)


def head_from_json(value: dict, wire_arrays: dict | None = None) -> StructureHead:
    """A head sent with a request as JSON (``io.head_store.head_to_json``), its atlas grids among the request's arrays
    (``prior_head.*``); a ``HeadError`` says what is wrong."""
    try:
        return StructureHead.from_arrays(with_head_wire_arrays(json_to_head_arrays(value), wire_arrays or {}, "prior_head"))
    except HeadStoreError as error:
        raise HeadError(str(error)) from None
