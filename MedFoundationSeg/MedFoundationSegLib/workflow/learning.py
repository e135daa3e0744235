"""The structure head in the Session's actions: after corrective clicks (learning within a volume), on a first
segmentation when a head from earlier volumes exists, and from a mask the user signed (learning across a dataset).

Heads travel between the Slicer side, the engine and the store as plain arrays (``StructureHead.to_arrays``) or as
their JSON form here, never as a path or a pickle.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core import geometry
from MedFoundationSegLib.io.head_store import HeadStoreError, json_to_head_arrays
from MedFoundationSegLib.segment import head_learning, shape_prior
from MedFoundationSegLib.segment.structure_head import HeadError, StructureHead
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
    blended = head_learning.blend(geometry.to_slices(probability, axis), learned, clicks)
    return CaseResult(geometry.from_slices(blended > 0.5, axis), geometry.from_slices(blended, axis), report,
                      head=learned.head.to_arrays())


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
                 prior: StructureHead | None = None) -> StructureHead:
    """The head of a mask the user signed in ``box_ijk``, warm-started from ``prior``: it has learned from one volume
    more, and its shape (segment/shape_prior.py) holds the mask too. Where the head cannot reproduce the mask
    (``head_learning.MIN_AGREEMENT``: a structure too fine for the embedding's cells) the prior's weights stay, or,
    without a prior, the head holds only the shape (``volumes`` 0: its weights are never used)."""
    box = geometry.slice_box(box_ijk, axis)
    mask_view = geometry.to_slices(np.asarray(mask_kji, bool), axis)
    learned = head_learning.learn_in_box(segmenter.predictor, mask_view, box.xyxy, (box.first, box.last), (), model,
                                         prior=weights_prior(prior))
    shape, shape_volumes = _next_shape(prior, mask_kji, box_ijk)
    if learned.agreement >= head_learning.MIN_AGREEMENT:
        head = dataclasses.replace(learned.head, volumes=(prior.volumes if prior else 0) + 1)
    elif prior is not None:
        head = prior
    else:
        head = dataclasses.replace(learned.head, volumes=0)
    return dataclasses.replace(head, shape=shape, shape_volumes=shape_volumes)


def weights_prior(prior: StructureHead | None) -> StructureHead | None:
    """``prior`` where its weights learned from at least one volume, else None (a head holding only a shape)."""
    return prior if prior is not None and prior.volumes > 0 else None


def _next_shape(prior: StructureHead | None, mask_kji: np.ndarray, box_ijk) -> tuple[np.ndarray, int]:
    """(shape, volumes): the prior's shape, if it has one, averaged with ``mask_kji`` in ``box_ijk``."""
    count = prior.shape_volumes if prior is not None and prior.shape is not None else 0
    return shape_prior.updated(prior.shape if count else None, count, mask_kji, box_ijk), count + 1


def add_shape(outcome: CaseResult, prior: StructureHead, box_ijk) -> CaseResult:
    """A first segmentation with the shape of earlier volumes blended into its probability (unchanged when the head
    holds no shape); the mask is the blend above 0.5."""
    if prior.shape is None or outcome.probability_kji is None:
        return outcome
    blended = shape_prior.blend(outcome.probability_kji, prior.shape, prior.shape_volumes, box_ijk)
    return CaseResult(blended >= 0.5, blended, dict(outcome.report, shape_prior={"volumes": prior.shape_volumes}),
                      head=outcome.head)


def with_shape(outcome: CaseResult, prior: StructureHead | None, box_ijk) -> CaseResult:
    """``outcome`` whose learned head (if any) also holds the structure's shape: the prior's, averaged with this
    outcome's mask in ``box_ijk`` (the box the user gave). The caller stores the head; each later action on the same
    volume replaces it, so the volume's last mask is the one that counts."""
    if outcome.head is None:
        return outcome
    shape, volumes = _next_shape(prior, outcome.mask_kji, box_ijk)
    head = dict(outcome.head, shape=shape, shape_volumes=np.array(volumes))
    return CaseResult(outcome.mask_kji, outcome.probability_kji, outcome.report, head=head)


def head_from_json(value: dict) -> StructureHead:
    """A head sent with a request as JSON (``io.head_store.head_to_json``); a ``HeadError`` says what is wrong."""
    try:
        return StructureHead.from_arrays(json_to_head_arrays(value))
    except HeadStoreError as error:
        raise HeadError(str(error)) from None
