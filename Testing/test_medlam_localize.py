"""MedLAM localization mechanics with a small seeded network (same topology, 4 base channels, 32^3 patches) so it
runs in seconds:
determinism, orientation invariance in physical space, SPL slabs, absent detection, MSS off, bad input."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from MedFoundationSegLib.core.volume import Volume, VolumeError
from MedFoundationSegLib.localize.medlam.localizer import MedLAMConfig, MedLAMLocalizer
from MedFoundationSegLib.localize.medlam.matching import correlate_fft, crop_patches, match_template
from MedFoundationSegLib.localize.medlam.network import MedLAM, set_precision
from MedFoundationSegLib.localize.templates import TemplateError, TemplateSet
from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom

SHAPE = (32, 64, 64)


def small_model(seed=0):
    """Same topology and algorithm, 4 base channels and 32^3 patches: the mechanics, not the accuracy, are tested."""
    torch.manual_seed(seed)
    return MedLAM(base_chns=4, patch_size=(32, 32, 32)).eval()


@pytest.fixture(scope="module")
def case():
    template = make_phantom(0, shape_kji=SHAPE)
    query = make_phantom(1, shape_kji=SHAPE)
    return TemplateSet([template_from_phantom("t0", template, ["liver", "spleen"])]), query


def _localizer(**cfg):
    base = dict(query_patches=3, feature_scales=("feature0", "feature1"))
    base.update(cfg)
    return MedLAMLocalizer(model=small_model(), config=MedLAMConfig(**base))


def _permuted_flipped(volume: Volume) -> Volume:
    """Same physical content, stored with axes permuted (i'=j, j'=k reversed, k'=i)."""
    array = np.flip(np.transpose(volume.array, (2, 0, 1)), axis=1).copy()
    d = volume.direction @ np.diag(volume.spacing_mm)
    cols = np.stack([d[:, 1], -d[:, 2], d[:, 0]], axis=1)
    spacing = np.linalg.norm(cols, axis=0)
    origin = volume.lps_from_ijk([[0, 0, volume.shape_kji[0] - 1]])[0]
    return Volume(array, spacing, origin, cols / spacing, name="permuted")


def test_crop_patches_pads_outside():
    array = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    patch = crop_patches(array, np.array([[0, 0, 0]]), size=4)
    assert patch.shape == (1, 1, 4, 4, 4)
    assert patch[0, 0, 2, 2, 2] == array[0, 0, 0] and patch[0, 0, 0, 0, 0] == 0


def test_deterministic_and_orientation_invariant(case):
    templates, query = case
    localizer = _localizer()
    first = localizer.localize(templates, query.image, ["liver", "spleen"])
    again = localizer.localize(templates, query.image, ["liver", "spleen"])
    moved = localizer.localize(templates, _permuted_flipped(query.image), ["liver", "spleen"])
    for name in ("liver", "spleen"):
        assert np.allclose(first[name].extreme_points_lps, again[name].extreme_points_lps)
        assert np.allclose(first[name].extreme_points_lps, moved[name].extreme_points_lps, atol=1e-3)
        assert first[name].engine == "medlam" and first[name].extreme_points_lps.shape == (6, 3)
        if first[name].present:
            assert np.allclose(first[name].box_lps_mm, moved[name].box_lps_mm, atol=1e-3)
    assert len(templates.feature_cache) == 1  # support features computed once


def test_spl_gives_slabs_and_mss_can_be_off(case):
    templates, query = case
    spl = _localizer(mode="SPL").localize(templates, query.image, ["liver"])["liver"]
    assert 2 <= len(spl.slabs) <= 6
    slab_z = [s.extreme_points_lps[4, 2] for s in spl.slabs]
    assert spl.details["mode"] == "SPL" and len(slab_z) == len(spl.slabs)
    no_mss = _localizer(feature_scales=()).localize(templates, query.image, ["liver"])["liver"]
    assert no_mss.confidence == 0.0 and np.isnan(no_mss.details["mss_peak_cosine"]).all()


def test_jump_outside_the_volume_marks_absent(case, monkeypatch):
    templates, query = case
    localizer = _localizer()
    original = localizer._query_reference

    def far_query(work, rng):  # embedding says "the structure is ~1.5 m above": tanh saturates
        fc, pos = original(work, rng)
        return fc - torch.tensor([20.0, 0.0, 0.0]), pos

    monkeypatch.setattr(localizer, "_query_reference", far_query)
    box = localizer.localize(templates, query.image, ["liver"])["liver"]
    assert not box.present and box.box_ijk is None and not all(box.details["rdr_inside"])


def test_recentring_records_steps(case):
    templates, query = case
    box = _localizer(recentre_iterations=2, feature_scales=()).localize(templates, query.image, ["spleen"])["spleen"]
    assert len(box.details["recentre_steps_vox"]) == 3


def test_bad_inputs(case):
    templates, query = case
    with pytest.raises(TemplateError, match="missing structure"):
        _localizer().localize(templates, query.image, ["kidney_left"])
    with pytest.raises(VolumeError, match="at least 8 voxels"):
        _localizer().localize(templates, Volume(np.zeros((1, 16, 16)), (1, 1, 1)), ["liver"])
    with pytest.raises(ValueError, match="mode"):
        MedLAMConfig(mode="XYZ")
    with pytest.raises(ValueError, match="unknown feature scale"):
        MedLAMConfig(feature_scales=("",))


@pytest.mark.parametrize("k, pad, shape", [(2, 1, (8, 8, 8)), (4, 2, (16, 12, 8)), (3, 1, (8, 8, 8)),
                                         (8, 4, (16, 16, 16))])
def test_fft_matching_equals_grouped_conv(k, pad, shape):
    """MSS similarity by FFT = the reference's grouped conv3d (one group per point), including the borders."""
    torch.manual_seed(k)
    query = F.normalize(torch.randn(3, 5, *shape), dim=1)
    templates = torch.randn(3, 5, k, k, k)
    expected = F.conv3d(query.reshape(1, -1, *shape), templates, padding=pad, groups=3)[0]
    for match in (correlate_fft, match_template):
        got = torch.stack([match(q, w, pad) for q, w in zip(query, templates)])
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4)


def test_batching_and_structure_grouping_do_not_change_points(case):
    """All structures' points share batches; a point's result must not depend on its batch mates. Support features
    are cached per structure."""
    templates, query = case
    localizer = _localizer(batch_size=4)
    together = localizer.localize(templates, query.image, ["liver", "spleen"])
    localizer.config.batch_size = 1
    computed = []
    original = localizer._compute_support
    localizer._compute_support = lambda ts, names, cancelled: computed.append(names) or original(ts, names, cancelled)
    alone = localizer.localize(templates, query.image, ["spleen"])["spleen"]
    assert computed == []  # a subset of cached structures reuses their support features
    assert alone.details["points_zyx_vox"] == together["spleen"].details["points_zyx_vox"]
    assert np.allclose(alone.extreme_points_lps, together["spleen"].extreme_points_lps)


def test_bf16_decoder_keeps_the_rdr_jump_exact(case):
    """bf16 mode rounds only the decoder: the RDR jump (tanh x 1500 mm, the most rounding-sensitive step) and the
    re-centring give exactly the fp32 points; the support cache keeps the precisions apart."""
    templates, query = case
    exact = _localizer(feature_scales=(), recentre_iterations=1).localize(templates, query.image, ["liver", "spleen"])
    fast = MedLAMLocalizer(model=set_precision(small_model(), "bf16"),
                           config=MedLAMConfig(query_patches=3, feature_scales=(), recentre_iterations=1))
    reduced = fast.localize(templates, query.image, ["liver", "spleen"])
    for name in ("liver", "spleen"):
        assert reduced[name].details["recentre_steps_vox"] == exact[name].details["recentre_steps_vox"]
        assert reduced[name].details["points_zyx_vox"] == exact[name].details["points_zyx_vox"]
    with_mss = MedLAMLocalizer(model=fast.model, config=MedLAMConfig(query_patches=3, feature_scales=("feature0",)))
    with_mss.localize(templates, query.image, ["liver"])
    assert len({key[1][3] for key in templates.feature_cache}) >= 2  # fp32 and bf16 entries, not shared


def test_timings_split(case):
    templates, query = case
    localizer = _localizer(recentre_iterations=1)
    localizer.localize(templates, query.image, ["liver", "spleen"])
    t = localizer.timings
    assert t["n_points"] == 12
    assert t["query_network_s"] >= t["query_reference_s"] + t["recentre_s"] + t["mss_s"] - 1e-6
    assert 0 < t["mss_similarity_s"] <= t["mss_s"] and 0 < t["mss_network_s"] <= t["mss_s"]
    with pytest.raises(ValueError, match="batch_size"):
        MedLAMConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown precision"):
        MedLAMConfig(precision="int8")
