"""The engine's memory of the model's probability behind the segments it handed out (workflow/evidence.py), and the
panel's requests that use it (workflow/actions.py)."""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.workflow.actions import EngineRequest, run_request
from MedFoundationSegLib.workflow.evidence import EDITED_INSIDE, EDITED_OUTSIDE, EvidenceStore
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult

SHAPE = (12, 40, 40)


def ball(centre, radius) -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def model_probability(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sure inside, unsure near the edge, a little noise: not the bare mask's 0.9 / 0.1."""
    rng = np.random.default_rng(seed)
    probability = np.where(mask, 0.97, 0.03) + rng.uniform(-0.02, 0.02, SHAPE)
    probability[mask ^ np.roll(mask, 1, axis=2)] = 0.55
    return probability.astype(np.float32)


def test_the_probability_behind_a_returned_segment_comes_back_where_the_user_left_it_unchanged():
    store = EvidenceStore()
    mask = ball((6, 20, 20), 5)
    probability = model_probability(mask)
    store.remember("volume A", mask, probability)
    recalled = store.recall("volume A", mask).probability_kji
    near = probability >= 0.01
    assert np.allclose(recalled[near], probability[near], atol=1e-3)  # float16 keeps it to 1e-3
    assert np.all(recalled[~near] == 0.0)
    edited = mask.copy()
    edited[6, 20, 15:18] = False  # the user erased a few voxels ...
    edited[6, 5:8, 5:8] = True  # ... and painted a few far away
    recalled = store.recall("volume A", edited).probability_kji
    assert np.all(recalled[6, 20, 15:18] == np.float32(EDITED_OUTSIDE))
    assert np.all(recalled[6, 5:8, 5:8] == np.float32(EDITED_INSIDE))
    unchanged = edited == mask
    assert np.allclose(recalled[unchanged & near], probability[unchanged & near], atol=1e-3)


def test_another_structure_another_volume_or_a_redrawn_segment_starts_from_its_bare_mask():
    store = EvidenceStore()
    liver, spleen = ball((6, 12, 12), 5), ball((6, 28, 28), 5)
    store.remember("volume A", liver, model_probability(liver))
    assert store.recall("volume A", spleen) is None
    assert store.recall("volume B", liver) is None
    assert store.recall("volume A", ball((6, 12, 12), 2)) is None  # a fifth of the stored voxels: redrawn
    assert store.recall("volume A", np.zeros(SHAPE, bool)) is None
    store.remember("volume A", spleen, None)  # a propagation has no probability: nothing to keep
    assert len(store) == 1


def test_the_best_overlapping_result_wins_and_the_oldest_go_first_when_the_store_is_full():
    small, large = ball((6, 20, 20), 4), ball((6, 20, 20), 5)
    store = EvidenceStore()
    store.remember("A", large, model_probability(large, 1))
    store.remember("A", small, model_probability(small, 2))
    assert np.allclose(store.recall("A", large).probability_kji[large], model_probability(large, 1)[large], atol=1e-3)
    assert np.allclose(store.recall("A", small).probability_kji[small], model_probability(small, 2)[small], atol=1e-3)
    one = EvidenceStore()
    one.remember("A", large, model_probability(large))
    fits_one = EvidenceStore(max_bytes=int(one._entries[next(iter(one._entries))].nbytes * 1.5))
    fits_one.remember("A", large, model_probability(large))
    fits_one.remember("A", small, model_probability(small))
    assert len(fits_one) == 1  # the newest stays
    assert np.allclose(fits_one.recall("A", small).probability_kji[small], model_probability(small)[small],
                       atol=1e-3)


def test_the_box_comes_back_grown_by_what_the_user_painted_beyond_it_and_cut_where_the_user_erased():
    store = EvidenceStore()
    mask = ball((6, 20, 20), 5)
    box_ijk = np.array([[15, 15, 1], [25, 25, 11]])
    store.remember("A", mask, model_probability(mask), box_ijk)
    assert np.array_equal(store.recall("A", mask).box_ijk, box_ijk)
    edited = mask.copy()
    edited[6, 20, 26:30] = True  # painted on beyond the box's right edge (i = 29)
    edited[6, 20, 20] = False  # and a voxel erased inside: no growth for that
    assert np.array_equal(store.recall("A", edited).box_ijk, [[15, 15, 1], [29, 25, 11]])
    shortened = mask.copy()
    shortened[9:] = False  # the user erased the top three slices: a Refine must not bring them back
    assert np.array_equal(store.recall("A", shortened).box_ijk, [[15, 15, 1], [25, 25, 8]])
    sure = EvidenceStore()  # a model sure of every voxel: the entry is cropped to the mask
    sure.remember("A", mask, mask.astype(np.float32), box_ijk)
    painted = mask.copy()
    painted[2, 35:38, 3] = True  # far beyond the stored crop
    evidence = sure.recall("A", painted)
    assert np.all(evidence.probability_kji[2, 35:38, 3] == np.float32(EDITED_INSIDE))
    assert np.array_equal(evidence.box_ijk, [[3, 15, 1], [25, 37, 11]])
    assert evidence.probability_kji[mask].min() == 1.0
    assert evidence.probability_kji.sum() == pytest.approx(mask.sum() + 3 * 0.9)
    store.remember("A", ball((6, 12, 12), 3), model_probability(ball((6, 12, 12), 3)))  # no box known
    assert store.recall("A", ball((6, 12, 12), 3)).box_ijk is None


class RecordingSession:
    """Answers segment_box with a known probability and records what refine was given."""

    def __init__(self):
        self.evidence = EvidenceStore()
        self.given = []

    def segment_box(self, volume, box_ijk, options, **kwargs):
        mask = ball((6, 20, 20), 5)
        return CaseResult(mask, model_probability(mask), {"mode": "box_guided"})

    def ready_click_model(self, volume, box_ijk, options):
        self.given.append(("click model readied", np.asarray(box_ijk).tolist()))

    def refine(self, volume, mask_kji, options, *, evidence=None, **kwargs):
        self.given.append(evidence)
        grown = mask_kji | ball((6, 20, 20), 6)
        return CaseResult(grown, None if evidence is None else np.maximum(evidence.probability_kji, grown * 0.8),
                          {"mode": "refine", "correction": {"box_ijk": [[13, 13, 0], [27, 27, 11]]}})


def test_a_refine_request_gets_the_probability_of_the_segment_the_engine_returned_for_that_volume():
    session = RecordingSession()
    volume = Volume(np.random.default_rng(0).integers(0, 100, SHAPE).astype(np.int16), (1.0, 1.0, 1.0))
    first = run_request(session, EngineRequest("segment_box", volume, Options(),
                                               {"box_ijk": [[14, 14, 1], [26, 26, 11]]})).case_result()
    assert session.given == [("click model readied", [[14, 14, 1], [26, 26, 11]])]  # before the first click
    refine = {"positive_ijk": [[20, 20, 6]]}
    run_request(session, EngineRequest("refine", volume, Options(), refine, {"mask_kji": first.mask_kji}))
    expected = model_probability(first.mask_kji)
    given = session.given[-1]
    assert np.allclose(given.probability_kji[first.mask_kji], expected[first.mask_kji], atol=1e-3)
    assert np.array_equal(given.box_ijk, [[14, 14, 1], [26, 26, 11]])  # the box the segment was made in
    second = session.refine(volume, first.mask_kji, Options(), evidence=given)
    # the refined result is remembered in turn, with the box its correction kept to
    run_request(session, EngineRequest("refine", volume, Options(), refine, {"mask_kji": second.mask_kji}))
    given = session.given[-1]
    assert np.allclose(given.probability_kji[second.mask_kji], second.probability_kji[second.mask_kji], atol=1e-3)
    assert np.array_equal(given.box_ijk, [[13, 13, 0], [27, 27, 11]])
    other = Volume(volume.array + 1, volume.spacing_mm)  # other voxels: another volume
    run_request(session, EngineRequest("refine", other, Options(), refine, {"mask_kji": first.mask_kji}))
    assert session.given[-1] is None


def test_a_volumes_identity_is_a_digest_of_its_voxels_computed_once(monkeypatch):
    """What the engine keeps per volume is keyed by its voxels; a request's actions ask for the key several times."""
    from MedFoundationSegLib.core import volume as volume_module
    from MedFoundationSegLib.core.volume import Volume

    voxels = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    volume = Volume(voxels, (1.0, 1.0, 1.0))
    identity = volume.identity()
    assert Volume(voxels.copy(), (1.0, 1.0, 1.0)).identity() == identity  # a fresh copy finds what was kept
    other = volume.with_array(voxels + 1)
    assert other.identity() != identity and Volume(voxels, (1.0, 1.0, 1.0), key="node@1").identity() == "node@1"
    monkeypatch.setattr(volume_module.hashlib, "blake2b", None)  # no second digest
    assert volume.identity() == identity and other.identity() != identity
