"""Earlier volumes as atlases (segment/atlas_prior.py): registered onto the next volume's image around the box, kept
in the structure's head, and carried by the store and the wire beside the head's JSON."""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.io.head_store import HeadStore
from MedFoundationSegLib.segment import atlas_prior as ap
from MedFoundationSegLib.segment import shape_prior as sp
from MedFoundationSegLib.segment import structure_head as sh
from MedFoundationSegLib.workflow import actions, learning, transport
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult

SHAPE = (30, 80, 80)
BOX_IJK = np.array([[20, 25, 8], [60, 55, 22]])  # the same drawn box in both volumes


def ellipsoid(centre_kji, radii_kji) -> np.ndarray:
    k, j, i = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre_kji, radii_kji)) <= 1


def volume(structure_i: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, structure mask): a bright structure at ``structure_i`` inside the box, a dimmer neighbour beside it."""
    structure = ellipsoid((15, 40, structure_i), (5, 10, 9))
    neighbour = ellipsoid((15, 40, structure_i + 17), (5, 9, 7))
    image = 100.0 * structure + 50.0 * neighbour + np.random.default_rng(seed).normal(0, 3, SHAPE)
    return image.astype(np.float32), structure


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _head(**atlases) -> sh.StructureHead:
    return sh.StructureHead("litemedsam", np.ones(4, np.float32), 0.1, np.zeros(4, np.float32),
                            np.ones(4, np.float32), volumes=1, cells=10, shape=np.zeros(sp.GRID_KJI, np.float32),
                            shape_volumes=1, **atlases)


def test_an_atlas_registered_onto_the_image_puts_the_structure_where_this_volume_has_it():
    earlier_image, earlier = volume(30, 0)
    image, truth = volume(36, 1)  # the structure sits 6 voxels further along i in the same box
    images, masks, _, _ = ap.appended(None, ap.image_grid(earlier_image, BOX_IJK), ap.mask_grid(earlier, BOX_IJK),
                                      ap.volume_digest(earlier_image), ap.appearance(earlier_image, earlier))
    carried = sp.from_box_grid(ap.carried_shape(images, masks, image, BOX_IJK, (2.0, 1.0, 1.0)), BOX_IJK, SHAPE)
    in_the_box = sp.from_box_grid(ap.mask_grid(earlier, BOX_IJK) / 255.0, BOX_IJK, SHAPE)  # where the box alone puts it
    assert dice(in_the_box >= 0.5, truth) < 0.6
    assert dice(carried >= 0.5, truth) > 0.85


def test_an_atlas_whose_image_does_not_match_after_registration_counts_for_little():
    earlier_image, earlier = volume(30, 0)
    image, truth = volume(36, 1)
    unlike = np.random.default_rng(2).normal(0, 50, SHAPE).astype(np.float32)  # no anatomy this volume shares
    elsewhere = ellipsoid((15, 40, 55), (5, 10, 9))
    atlases = ap.appended(None, ap.image_grid(earlier_image, BOX_IJK), ap.mask_grid(earlier, BOX_IJK),
                          ap.volume_digest(earlier_image), ap.appearance(earlier_image, earlier))
    images, masks, _, _ = ap.appended(atlases, ap.image_grid(unlike, BOX_IJK), ap.mask_grid(elsewhere, BOX_IJK),
                                      ap.volume_digest(unlike), ap.appearance(unlike, elsewhere))
    carried = sp.from_box_grid(ap.carried_shape(images, masks, image, BOX_IJK, (2.0, 1.0, 1.0)), BOX_IJK, SHAPE)
    assert dice(carried >= 0.5, truth) > 0.85  # an equal vote would halve the structure's share, to the threshold
    assert carried[elsewhere & ~truth].max() < 0.2


def test_a_first_segmentation_takes_the_registered_atlases_where_the_head_keeps_them():
    earlier_image, earlier = volume(30, 0)
    image, truth = volume(36, 1)
    head = _head(atlas_images=ap.image_grid(earlier_image, BOX_IJK)[None],
                 atlas_masks=ap.mask_grid(earlier, BOX_IJK)[None])
    head.shape = sp.to_box_grid(earlier, BOX_IJK)
    unsure = np.full(SHAPE, 0.45, np.float32)  # a model that sees nothing
    started = learning.add_shape(CaseResult(unsure >= 0.5, unsure, {}), head, BOX_IJK, image, (2.0, 1.0, 1.0))
    assert started.report["shape_prior"] == {"volumes": 1, "from": "registered atlases (1)"}
    assert dice(started.mask_kji, truth) > 0.8
    without = learning.add_shape(CaseResult(unsure >= 0.5, unsure, {}), _head(), BOX_IJK, image, (2.0, 1.0, 1.0))
    assert without.report["shape_prior"]["from"] == "mean shape in the box"  # a head stored before atlases


def test_a_head_keeps_the_latest_volumes_as_atlases():
    atlases = None
    for n in range(ap.MAX_ATLASES + 2):
        grid = np.full(ap.GRID_KJI, n, np.uint8)
        atlases = ap.appended(atlases, grid, grid, np.full(ap.SOURCE_BYTES, n + 1, np.uint8),
                              np.array([n, 1], np.float32))
    images, masks, sources, looks = atlases
    assert images.shape == masks.shape == (ap.MAX_ATLASES, *ap.GRID_KJI) and looks.shape == (ap.MAX_ATLASES, 2)
    assert [int(g[0, 0, 0]) for g in images] == list(range(2, ap.MAX_ATLASES + 2))
    assert list(looks[:, 0]) == list(range(2, ap.MAX_ATLASES + 2))  # each atlas keeps its own appearance
    image, mask = volume(30, 0)
    learned = learning.with_shape(CaseResult(mask, mask.astype(np.float32), {}, head=_head().to_arrays()),
                                  _head(atlas_images=images, atlas_masks=masks), BOX_IJK, image).head
    assert learned["atlas_images"].shape[0] == ap.MAX_ATLASES
    np.testing.assert_array_equal(learned["atlas_masks"][-1], ap.mask_grid(mask, BOX_IJK))
    assert not learned["atlas_sources"][:-1].any()  # atlases stored before their sources were kept: unknown
    np.testing.assert_array_equal(learned["atlas_sources"][-1], ap.volume_digest(image))
    assert np.isnan(learned["atlas_appearance"][:-1]).all()  # and before their appearances were kept: unknown
    np.testing.assert_allclose(learned["atlas_appearance"][-1], [image[mask].mean(), image[mask].std()], rtol=1e-4)
    assert sh.StructureHead.from_arrays(learned).atlas_appearance.shape == (ap.MAX_ATLASES, 2)


def test_a_volume_learned_again_replaces_its_atlas_and_counts_once():
    image, mask = volume(30, 0)
    other_image, other_mask = volume(36, 1)
    result = CaseResult(mask, mask.astype(np.float32), {}, head=_head().to_arrays())
    once = sh.StructureHead.from_arrays(learning.with_shape(result, None, BOX_IJK, image).head)
    assert len(once.atlas_images) == 1 and once.shape_volumes == 1 and once.volumes == 1
    smaller = mask & (np.arange(SHAPE[2]) < 30)  # corrected since: the later mask is the one that counts
    again = learning.with_shape(CaseResult(smaller, None, {}, head=_head().to_arrays()), once, BOX_IJK,
                                image.copy()).head  # the same voxels, loaded afresh
    assert len(again["atlas_images"]) == 1 and int(again["shape_volumes"]) == 1 and int(again["volumes"]) == 1
    np.testing.assert_array_equal(again["atlas_masks"][0], ap.mask_grid(smaller, BOX_IJK))
    other = learning.with_shape(CaseResult(other_mask, None, {}, head=_head().to_arrays()),
                                sh.StructureHead.from_arrays(again), BOX_IJK, other_image).head
    assert len(other["atlas_images"]) == 2 and int(other["shape_volumes"]) == 2 and int(other["volumes"]) == 2
    assert not np.array_equal(ap.volume_digest(image), ap.volume_digest(other_image))
    whole = np.rint(image).astype(np.int16)  # the same scan, read by a loader that keeps its integer type
    np.testing.assert_array_equal(ap.volume_digest(whole), ap.volume_digest(whole.astype(np.float32)))


def _atlas_head() -> sh.StructureHead:
    image, mask = volume(30, 0)
    return _head(atlas_images=ap.image_grid(image, BOX_IJK)[None], atlas_masks=ap.mask_grid(mask, BOX_IJK)[None],
                 atlas_sources=ap.volume_digest(image)[None], atlas_appearance=ap.appearance(image, mask)[None])


def test_atlases_survive_the_store_the_result_and_the_request(tmp_path):
    head = _atlas_head()
    store = HeadStore(tmp_path)
    store.save("liver", "litemedsam", head.to_arrays())
    stored = sh.StructureHead.from_arrays(store.load("liver", "litemedsam"))
    np.testing.assert_array_equal(stored.atlas_images, head.atlas_images)
    np.testing.assert_array_equal(stored.atlas_sources, head.atlas_sources)
    np.testing.assert_array_equal(stored.atlas_appearance, head.atlas_appearance)
    mask = np.zeros(SHAPE, bool)
    sent = transport.encode_result(actions._case(CaseResult(mask, head=head.to_arrays()),
                                                 actions.EngineRequest("segment_box")))
    back = sh.StructureHead.from_arrays(transport.decode_result(sent).case_result().head)
    np.testing.assert_array_equal(back.atlas_masks, head.atlas_masks)
    np.testing.assert_array_equal(back.atlas_sources, head.atlas_sources)
    np.testing.assert_array_equal(back.atlas_appearance, head.atlas_appearance)
    from MedFoundationSegLib.io.head_store import head_to_json, head_wire_arrays

    request = actions.EngineRequest("segment_box", None, Options(model="litemedsam"),
                                    {"prior_head": head_to_json(head.to_arrays())},
                                    head_wire_arrays(head.to_arrays(), "prior_head"))
    received = actions._prior_head(transport.decode_job(transport.encode_job(request, {}), {}, 1 << 30))
    np.testing.assert_array_equal(received.atlas_images, head.atlas_images)
    np.testing.assert_array_equal(received.atlas_masks, head.atlas_masks)
    np.testing.assert_array_equal(received.atlas_sources, head.atlas_sources)
    np.testing.assert_array_equal(received.atlas_appearance, head.atlas_appearance)


@pytest.mark.parametrize("change", [
    {"atlas_images": np.zeros((1, *ap.GRID_KJI), np.float32)},  # not uint8
    {"atlas_masks": np.zeros((2, *ap.GRID_KJI), np.uint8)},  # not one mask per image
    {"atlas_images": np.zeros((1, 4, 4, 4), np.uint8)},  # another grid
    {"atlas_sources": np.zeros((2, ap.SOURCE_BYTES), np.uint8)},  # not one source per atlas
    {"atlas_appearance": np.zeros((2, 2), np.float32)},  # not one appearance per atlas
    {"atlas_appearance": np.array([[np.inf, 1.0]], np.float32)},  # not finite
    {"atlas_appearance": np.array([[100.0, -1.0]], np.float32)},  # a negative spread
])
def test_bad_atlases_are_refused(change):
    arrays = _atlas_head().to_arrays() | change
    with pytest.raises(sh.HeadError, match="atlas"):
        sh.StructureHead.from_arrays(arrays)
