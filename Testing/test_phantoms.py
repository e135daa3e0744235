"""CT-like phantoms: deterministic, varied, realistic HU, every structure present with plausible size."""


import numpy as np
import pytest
from MedFoundationSegLib.sampledata.phantoms import LABEL_IDS, PhantomError, make_phantom
from scipy import ndimage

SMALL = (48, 112, 112)

# Adult-equivalent volumes (ml) a real abdomen could show; generous on purpose (shape variation is wide).
ADULT_ML = {
    "liver": (900, 3000), "spleen": (40, 600), "kidney_right": (60, 400), "kidney_left": (60, 400),
    "stomach": (100, 1500), "aorta": (40, 400), "spine": (150, 1500), "gallbladder": (8, 150),
    "pancreas": (20, 200), "adrenal_right": (1.5, 30), "adrenal_left": (1.5, 30),
}


@pytest.fixture(scope="module")
def small_phantoms():
    return [make_phantom(seed, SMALL) for seed in range(4)]


def test_same_seed_gives_identical_phantom():
    a, b = make_phantom(7, SMALL), make_phantom(7, SMALL)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.image.spacing_mm == b.image.spacing_mm


def test_seeds_differ_in_spacing_shape_and_size(small_phantoms):
    spacings = {p.image.spacing_mm for p in small_phantoms}
    assert len(spacings) == len(small_phantoms)
    livers = [p.volume_ml("liver") for p in small_phantoms]
    assert max(livers) / min(livers) > 1.1
    first = small_phantoms[0].labels.array
    for other in small_phantoms[1:]:
        assert (first != other.labels.array).mean() > 0.01


def test_geometry_and_dtypes(small_phantoms):
    for p in small_phantoms:
        assert p.image.array.dtype == np.int16 and p.labels.array.dtype == np.uint8
        assert p.image.array.shape == SMALL == p.labels.array.shape
        assert p.labels.spacing_mm == p.image.spacing_mm and p.labels.origin_lps_mm == p.image.origin_lps_mm
        assert p.label_ids == LABEL_IDS
        assert {v: k for k, v in p.label_names.items()} == p.label_ids
        assert set(np.unique(p.labels.array)) <= {0, *LABEL_IDS.values()}


def test_every_structure_present_with_plausible_volume(small_phantoms):
    for p in small_phantoms:
        adult_factor = float(np.prod(p.anatomy_scale_xyz))
        for name, (low, high) in ADULT_ML.items():
            ml = p.volume_ml(name) / adult_factor
            assert low <= ml <= high, f"seed {p.seed}: {name} {ml:.0f} adult-ml outside [{low}, {high}]"
        # Organs are single blobs (the kidneys/liver are not shattered by the priority painting).
        for name in ("liver", "spleen", "kidney_right", "kidney_left", "aorta"):
            components, count = ndimage.label(p.mask(name))
            sizes = np.bincount(components.ravel())[1:]
            assert sizes.max() > 0.95 * sizes.sum(), f"seed {p.seed}: {name} is fragmented ({count} parts)"
        # Left/right anatomy: liver mostly on the patient's right (low i), spleen on the left (high i).
        centre_i = lambda name: np.argwhere(p.mask(name))[:, 2].mean()  # noqa: E731
        assert centre_i("liver") < SMALL[2] / 2 < centre_i("spleen")
        assert centre_i("kidney_right") < centre_i("kidney_left")


def test_hounsfield_ranges(small_phantoms):
    for p in small_phantoms:
        hu, labels = p.image.array.astype(float), p.labels.array
        corner = hu[:, :4, :4]
        assert abs(np.median(corner) + 1000) < 30  # air outside the body
        liver = np.median(hu[p.mask("liver")])
        spleen = np.median(hu[p.mask("spleen")])
        aorta = np.median(hu[p.mask("aorta")])
        if p.contrast_phase == "venous":
            assert 80 < liver < 150 and 80 < spleen < 160 and 120 < aorta < 250
        else:
            assert 35 < liver < 85 and 25 < spleen < 80 and 20 < aorta < 75
        assert np.median(hu[p.mask("spine")]) > 180  # bone
        assert -10 < np.median(hu[p.mask("gallbladder")]) < 45  # bile
        body_fat = hu[(labels == 0) & (hu > -160) & (hu < -40)]
        assert body_fat.size > 0.02 * hu.size  # subcutaneous/visceral fat exists
        assert (hu < -900).sum() > 0.1 * hu.size
        # Noise and partial volume: organs are not flat, and edges have intermediate values.
        assert 5 < hu[p.mask("liver")].std() < 60
        assert np.isin(labels, [LABEL_IDS["stomach"]]).any()


def test_organs_touch_but_never_overlap(small_phantoms):
    for p in small_phantoms:
        liver = p.mask("liver")
        grown = ndimage.binary_dilation(liver, iterations=2)
        neighbours = set(np.unique(p.labels.array[grown & ~liver])) - {0}
        assert neighbours & {LABEL_IDS["gallbladder"], LABEL_IDS["kidney_right"], LABEL_IDS["adrenal_right"],
                             LABEL_IDS["stomach"]}, f"seed {p.seed}: liver touches nothing"


def test_default_size_uses_ct_spacing():
    p = make_phantom(11)
    assert p.image.array.shape == (120, 256, 256)
    sx, sy, sz = p.image.spacing_mm
    assert 0.7 <= sx == sy <= 0.9 and 1.5 <= sz <= 3.0
    assert all(p.mask(name).any() for name in LABEL_IDS)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(PhantomError, match="shape_kji"):
        make_phantom(0, (4, 64, 64))
    with pytest.raises(PhantomError, match="contrast_phase"):
        make_phantom(0, SMALL, contrast_phase="arterial")
    with pytest.raises(PhantomError, match="spacing_mm"):
        make_phantom(0, SMALL, spacing_mm=(1.0, -1.0, 2.0))
