"""The mask decoder's output layers adapted to a signed structure (segment/decoder_adaptation.py), kept in its head
and used by the next volume's first segmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from MedFoundationSegLib.io.head_store import HeadStore, head_to_json, head_wire_arrays
from MedFoundationSegLib.models.mask_decoder import MaskDecoder
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.segment import decoder_adaptation as da
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.workflow import learning
from MedFoundationSegLib.workflow.results import CaseResult
from MedFoundationSegLib.workflow.session import Session


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def box_of(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


@pytest.fixture(scope="module")
def phantom_case():
    phantom = make_phantom(7, (24, 96, 96))
    session = Session()
    return session, phantom.image, phantom.labels.array == phantom.label_ids["spleen"]


def _slice_dice(predictor, truth: np.ndarray, slices) -> float:
    scores = []
    for k in slices:
        masks = predictor.predict(k, boxes=da.slice_prompts_xyxy(truth[k], truth[k].shape[::-1])[1]).masks[0, 0]
        scores.append(dice(masks, truth[k]))
    return float(np.mean(scores))


def test_adapted_layers_draw_the_signed_slices_closer_and_leave_the_model_as_it_was(phantom_case):
    session, image, truth = phantom_case
    predictor = session.predictor(image, model="litemedsam")
    box = box_of(truth)
    own = {name: p.detach().clone() for name, p in predictor.model.mask_decoder.named_parameters()}
    layers = da.adapt(predictor, truth, (*box[0][:2], *box[1][:2]), int(box[0][2]), int(box[1][2]), steps=40)
    assert set(layers) == set(da.adapted_parameters(predictor.model.mask_decoder))
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in layers.values())
    assert any(not np.array_equal(v, own[name].numpy()) for name, v in layers.items())
    slices = da.spread_slices(truth, int(box[0][2]), int(box[1][2]))
    assert 1 < len(slices) <= da.MAX_SLICES and slices[0] == box[0][2] and slices[-1] == box[1][2]
    before = _slice_dice(predictor, truth, slices)
    with predictor.decoding_with(da.with_layers(predictor.model.mask_decoder, layers)):
        after = _slice_dice(predictor, truth, slices)
    assert after > before + 0.005, (before, after)
    assert predictor.decoder_override is None and _slice_dice(predictor, truth, slices) == pytest.approx(before)
    for name, p in predictor.model.mask_decoder.named_parameters():  # the model's own decoder is untouched
        assert torch.equal(p, own[name]), name


def test_a_first_segmentation_decodes_with_the_heads_layers_and_only_inside_it(phantom_case):
    session, image, truth = phantom_case
    box = box_of(truth)
    predictor = session.predictor(image, model="litemedsam")
    silent = {name: p.detach().numpy().copy() for name, p in da.adapted_parameters(predictor.model.mask_decoder).items()}
    for name in silent:
        if name.startswith("output_hypernetworks_mlps.0.layers.2"):
            silent[name][:] = 0  # the mask token's weights all zero: logits 0 everywhere, no foreground
    head = sh.fit_head(np.random.default_rng(0).normal(0, 1, (40, 256)).astype(np.float32),
                       (np.arange(40) % 2).astype(np.float32), "litemedsam")
    head = dataclasses.replace(head, volumes=0, decoder=silent)  # volumes 0: only the decoder layers act
    plain = session.segment_box(image, box, model="litemedsam", padding_mm=0.0)
    silenced = session.segment_box(image, box, model="litemedsam", padding_mm=0.0, prior_head=head)
    assert dice(plain.mask_kji, truth) > 0.4 and silenced.mask_kji.sum() < 0.05 * plain.mask_kji.sum()
    assert silenced.report["decoder"] == "adapted to the structure by signed volumes" and "decoder" not in plain.report
    again = session.segment_box(image, box, model="litemedsam", padding_mm=0.0)
    np.testing.assert_array_equal(again.mask_kji, plain.mask_kji)
    unlearned = session.segment_box(image, box, model="litemedsam", padding_mm=0.0, prior_head=head, learn=False)
    np.testing.assert_array_equal(unlearned.mask_kji, plain.mask_kji)  # options.learn off: the head is not used


def test_learn_signed_adapts_the_decoder_warm_started_from_the_prior(phantom_case):
    session, image, truth = phantom_case
    box = box_of(truth)
    assert session.learn_signed(image, truth, box, model="litemedsam").decoder is None  # only when asked for
    first = session.learn_signed(image, truth, box, model="litemedsam", adapt_decoder=True)
    assert first.decoder is not None and set(first.decoder) == set(
        da.adapted_parameters(session.predictor(image, model="litemedsam").model.mask_decoder))
    kept = session.learn_signed(image, truth, box, model="litemedsam", prior_head=first)
    assert all(np.array_equal(kept.decoder[n], first.decoder[n]) for n in first.decoder)  # not asked: kept as is
    second = session.learn_signed(image, truth, box, model="litemedsam", prior_head=first, adapt_decoder=True)
    step = max(float(np.abs(second.decoder[n] - first.decoder[n]).max()) for n in first.decoder)
    # the same mask from the model's own layers would give the same layers again: these went on from the prior's
    assert 0 < step <= 2 * da.LEARNING_RATE * da.STEPS  # Adam moves a weight by about the learning rate a step


def _head_with_layers(decoder: MaskDecoder) -> sh.StructureHead:
    head = sh.fit_head(np.random.default_rng(1).normal(0, 1, (30, 4)).astype(np.float32),
                       (np.arange(30) % 2).astype(np.float32), "litemedsam")
    layers = {n: p.detach().numpy() + 0.5 for n, p in da.adapted_parameters(decoder).items()}
    return dataclasses.replace(head, decoder=layers)


def test_decoder_layers_survive_the_store_the_wire_and_the_panels_head(tmp_path):
    from MedFoundationSegLib.workflow import actions, transport
    from MedFoundationSegLib.workflow.options import Options

    decoder = MaskDecoder()
    head = _head_with_layers(decoder)
    store = HeadStore(tmp_path)
    store.save("spleen", "litemedsam", head.to_arrays())
    stored = sh.StructureHead.from_arrays(store.load("spleen", "litemedsam"))
    for name, value in head.decoder.items():
        np.testing.assert_array_equal(stored.decoder[name], value)
    request = actions.EngineRequest("segment_box", None, Options(model="litemedsam"),
                                    {"prior_head": head_to_json(head.to_arrays())},
                                    head_wire_arrays(head.to_arrays(), "prior_head"))
    received = actions._prior_head(transport.decode_job(transport.encode_job(request, {}), {}, 1 << 30))
    assert set(received.decoder) == set(head.decoder)
    np.testing.assert_array_equal(received.decoder["output_upscaling.0.weight"], head.decoder["output_upscaling.0.weight"])
    # A head learned from corrections in the panel keeps the signed volumes' layers when it is stored again
    mask = np.zeros((8, 20, 20), bool)
    mask[2:6, 5:15, 5:15] = True
    corrected = dataclasses.replace(head, decoder=None).to_arrays()
    kept = learning.with_shape(CaseResult(mask, None, {}, head=corrected), head, box_of(mask), mask.astype(np.float32))
    np.testing.assert_array_equal(sh.StructureHead.from_arrays(kept.head).decoder["output_upscaling.0.weight"],
                                  head.decoder["output_upscaling.0.weight"])


def test_layers_that_do_not_fit_or_are_not_finite_are_refused_in_one_line():
    decoder = MaskDecoder()
    head = _head_with_layers(decoder)
    arrays = head.to_arrays()
    arrays["decoder.output_upscaling.0.bias"] = np.full_like(arrays["decoder.output_upscaling.0.bias"], np.nan)
    with pytest.raises(sh.HeadError, match="not finite"):
        sh.StructureHead.from_arrays(arrays)

    class Predictor:  # what decoding_as_learned reads of a predictor
        model = type("Model", (), {"mask_decoder": MaskDecoder(transformer_dim=128)})()

    with pytest.raises(sh.HeadError, match="do not match|has shape"):
        learning.decoding_as_learned(Predictor, head)
    missing = dict(head.decoder)
    missing.pop("output_upscaling.0.bias")
    with pytest.raises(da.DecoderAdaptationError, match="do not match"):
        da.with_layers(decoder, missing)
