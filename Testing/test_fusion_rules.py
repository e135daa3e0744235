"""Which source a structure trusts, learned across a dataset: the fusion rules of segment/shape_prior.py scored on
each signed volume (workflow/learning.py) and the best one used on the next volume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from MedFoundationSegLib.io.head_store import (
    HeadStore,
    head_to_json,
    head_wire_arrays,
    json_to_head_arrays,
    with_head_wire_arrays,
)
from MedFoundationSegLib.segment import shape_prior as sp
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.workflow import learning
from MedFoundationSegLib.workflow.results import CaseResult

SHAPE = (30, 100, 100)
SPACING_KJI_MM = (1.0, 1.0, 1.0)


def ellipsoid(centre_kji, radii_kji) -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre_kji, radii_kji)) <= 1


def box_of(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _head(shape=None, shape_volumes=0, **fields) -> sh.StructureHead:
    return sh.StructureHead("litemedsam", np.ones(4, np.float32), 0.1, np.zeros(4, np.float32),
                            np.ones(4, np.float32), volumes=2, cells=10, shape=shape, shape_volumes=shape_volumes,
                            **fields)


STRUCTURE = ellipsoid((15, 50, 50), (8, 20, 20))
BOX = box_of(STRUCTURE)


def _sure_of_half() -> CaseResult:
    """A model sure of the structure's left half and as sure that its right half is background (a box too narrow)."""
    probability = np.where(STRUCTURE, 0.999, 0.0).astype(np.float32)
    probability[:, :, 50:] = 0.0
    return CaseResult(probability >= 0.5, probability, {"model": "litemedsam"})


def test_the_first_rule_keeps_a_sure_model_and_a_later_rule_lets_agreeing_volumes_overrule_it():
    shape = sp.to_box_grid(STRUCTURE, BOX)
    shown = _sure_of_half()
    share = sp.from_box_grid(shape, BOX, SHAPE)
    scores = sp.rule_dice(shown.probability_kji, share, 5, STRUCTURE)
    assert scores.shape == (len(sp.RULES),) and scores[0] < 0.7 < 0.9 < scores.max()
    assert sp.chosen_rule(None) == 0 and sp.chosen_rule(np.zeros(len(sp.RULES))) == 0  # ties go to the first
    assert sp.chosen_rule(scores) == int(np.argmax(scores)) != 0
    assert sp.chosen_rule(scores[:-1]) == 0  # scores of another set of rules are not read as these
    np.testing.assert_array_equal(sp.blend(shown.probability_kji, shape, 5, BOX) >= 0.5, shown.mask_kji)
    overruled = sp.blend(shown.probability_kji, shape, 5, BOX, sp.chosen_rule(scores)) >= 0.5
    assert dice(overruled, STRUCTURE) > 0.9


def test_a_signed_volume_scores_the_rules_and_the_next_volume_uses_the_best():
    prior = _head(sp.to_box_grid(STRUCTURE, BOX), 5)
    image = STRUCTURE.astype(np.float32) * 100
    started, first = learning.add_shape(_sure_of_half(), prior, BOX, image, SPACING_KJI_MM)
    assert started.report["shape_prior"]["rule"] == 0 and dice(started.mask_kji, STRUCTURE) < 0.7
    signed = CaseResult(STRUCTURE, STRUCTURE.astype(np.float32), {}, head=_head().to_arrays())
    arrays = learning.with_shape(signed, prior, BOX, image, first).head
    assert int(arrays["rule_volumes"]) == 1
    np.testing.assert_allclose(arrays["rule_scores"], sp.rule_dice(first.probability, first.prior_share, 5,
                                                                   STRUCTURE[first.region]))
    learned = sh.StructureHead.from_arrays(arrays)
    again, _ = learning.add_shape(_sure_of_half(), learned, BOX, image, SPACING_KJI_MM)
    assert again.report["shape_prior"]["rule"] == sp.chosen_rule(learned.rule_scores) != 0
    assert again.report["shape_prior"]["rules_scored_on"] == 1 and dice(again.mask_kji, STRUCTURE) > 0.9
    # a volume the head learned before is not scored twice; without a first answer the prior's scores carry over
    relearned = learning.with_shape(signed, learned, BOX, image, first).head
    np.testing.assert_array_equal(relearned["rule_scores"], learned.rule_scores)
    assert int(relearned["rule_volumes"]) == 1
    other = STRUCTURE * 50.0 + 7
    carried = learning.with_shape(signed, learned, BOX, other).head
    assert int(carried["rule_volumes"]) == 1 and int(carried["shape_volumes"]) == 7


def test_a_first_answer_is_kept_per_volume_and_box_and_only_the_latest():
    @dataclasses.dataclass
    class Volume:
        name: str

        def identity(self):
            return self.name

    answers = learning.FirstAnswers(size=2)
    answer = learning.FirstAnswer((slice(0, 1),), np.zeros(1, np.float16), np.zeros(1, np.float16), 1)

    def kept(name, box=BOX):
        found = answers.get(Volume(name), box)
        return found is not None and found.probability is answer.probability

    answers.keep(Volume("a"), BOX, answer, np.ones(SHAPE, bool))
    assert kept("a", BOX.tolist()) and not kept("a", BOX + 1)
    assert answers.get(Volume("a"), BOX).shown.tolist() == [[[True] * SHAPE[2]] * SHAPE[1]]  # the mask handed out
    grown = BOX + np.array([[-3, 0, 0], [0, 2, 0]])  # a box grown to hold an include click holds the drawn one
    assert kept("a", grown) and not kept("b", grown)
    answers.keep(Volume("b"), BOX, answer)
    answers.keep(Volume("c"), BOX, answer)
    assert not kept("a") and kept("c")
    answers.keep(Volume("c"), BOX, None)  # segmented again without a prior: nothing to score on
    assert not kept("c")


def test_a_mask_signed_as_it_was_handed_out_does_not_score_the_rules():
    prior = _head(sp.to_box_grid(STRUCTURE, BOX), 5, rule_scores=np.ones(len(sp.RULES), np.float32), rule_volumes=1)
    image = STRUCTURE.astype(np.float32) * 100
    shown = _sure_of_half()
    _, first = learning.add_shape(shown, prior, BOX, image, SPACING_KJI_MM)
    first = dataclasses.replace(first, shown=shown.mask_kji[first.region])
    as_shown = CaseResult(shown.mask_kji, shown.probability_kji, {}, head=_head().to_arrays())
    assert int(learning.with_shape(as_shown, prior, BOX, image, first).head["rule_volumes"]) == 1
    corrected = CaseResult(STRUCTURE, STRUCTURE.astype(np.float32), {}, head=_head().to_arrays())
    assert int(learning.with_shape(corrected, prior, BOX, image, first).head["rule_volumes"]) == 2


def test_rule_scores_survive_the_store_and_the_wire(tmp_path):
    head = _head(sp.to_box_grid(STRUCTURE, BOX), 3, rule_scores=np.linspace(0.5, 1.5, len(sp.RULES)),
                 rule_volumes=2)
    store = HeadStore(tmp_path)
    store.save("pancreas", "litemedsam", head.to_arrays())
    stored = sh.StructureHead.from_arrays(store.load("pancreas", "litemedsam"))
    arrays = head.to_arrays()
    wired = sh.StructureHead.from_arrays(with_head_wire_arrays(json_to_head_arrays(head_to_json(arrays)),
                                                               head_wire_arrays(arrays, "prior_head"), "prior_head"))
    for loaded in (stored, wired):
        np.testing.assert_allclose(loaded.rule_scores, head.rule_scores)
        assert loaded.rule_volumes == 2
    assert sh.StructureHead.from_arrays(_head().to_arrays()).rule_scores is None  # heads stored before rules load
    fewer = head.to_arrays() | {"rule_scores": np.ones(len(sp.RULES) - 1, np.float32)}
    assert sh.StructureHead.from_arrays(fewer).rule_scores is None  # another version's rules: not used


@pytest.mark.parametrize("scores, volumes", [(np.full(len(sp.RULES), 3.0), 2), (np.full(len(sp.RULES), np.nan), 2),
                                             (np.full(len(sp.RULES), -0.1), 2), (np.ones(len(sp.RULES)), 0)])
def test_bad_rule_scores_are_refused(scores, volumes):
    arrays = _head().to_arrays() | {"rule_scores": scores.astype(np.float32), "rule_volumes": np.array(volumes)}
    with pytest.raises(sh.HeadError, match="fusion rule"):
        sh.StructureHead.from_arrays(arrays)
