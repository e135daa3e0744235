"""Registration localizer on small generated phantoms (seconds): accuracy, absent structures, bad input."""

import dataclasses

import numpy as np
import pytest
from MedFoundationSegLib.core.boxes import lps_box_from_extreme_points
from MedFoundationSegLib.core.volume import Volume, VolumeError, read_volume, write_volume
from MedFoundationSegLib.localize.registration import RegistrationConfig, localize_registration
from MedFoundationSegLib.localize.templates import Template, TemplateError
from MedFoundationSegLib.sampledata.deform import deformed_copy
from MedFoundationSegLib.sampledata.metrics import box_iou_mm
from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom

LARGE = ["liver", "spleen", "kidney_left", "kidney_right"]
SHAPE = (40, 80, 80)


@pytest.fixture(scope="module")
def pair():
    template = make_phantom(0, shape_kji=SHAPE)
    query_image, query_labels = deformed_copy(template.image, template.labels, seed=5, noise_sd=20.0,
                                              rotation_deg=10, scale=0.1, translation_mm=15, elastic_mm=6)
    truth = Template.from_volumes("truth", query_image, query_labels, template.label_ids)
    return template, query_image, truth


def test_deformed_phantom_boxes_reach_iou_06(pair):
    template, query, truth = pair
    boxes = localize_registration([template_from_phantom("t0", template)], query, LARGE, spl=True)
    for name in LARGE:
        gt = lps_box_from_extreme_points(truth.extreme_points(name))
        iou = box_iou_mm(boxes[name].box_lps_mm, gt)
        identity = box_iou_mm(lps_box_from_extreme_points(template_from_phantom("t", template).extreme_points(name)), gt)
        assert boxes[name].present and boxes[name].engine == "registration"
        assert iou >= 0.6, (name, iou)
        assert iou > identity  # registration did the work, not the shared grid
        assert 1 <= len(boxes[name].slabs) <= 6 and boxes[name].box_ijk is not None
    assert 0.0 < boxes["liver"].confidence <= 1.0


def test_other_phantom_templates_beat_no_registration(pair):
    """Independent phantoms differ per organ in size, so affine maps cannot be exact; a median over two templates must
    still beat taking the template boxes unregistered."""
    _, _, _ = pair
    templates = [template_from_phantom(f"t{s}", make_phantom(s, shape_kji=SHAPE)) for s in (2, 3)]
    query = make_phantom(1, shape_kji=SHAPE)
    truth = template_from_phantom("q", query)
    boxes = localize_registration(templates, query.image, LARGE)
    reg, identity = [], []
    for name in LARGE:
        gt = lps_box_from_extreme_points(truth.extreme_points(name))
        reg.append(box_iou_mm(boxes[name].box_lps_mm, gt))
        identity.append(np.mean([box_iou_mm(lps_box_from_extreme_points(t.extreme_points(name)), gt)
                                 for t in templates]))
    assert np.mean(reg) > np.mean(identity) + 0.05, (reg, identity)
    assert boxes["liver"].details["wall_spread_mm"] >= 0


def test_structure_outside_the_query_is_absent(pair):
    template, query, truth = pair
    liver_z = np.nonzero((truth.mask("liver")).any(axis=(1, 2)))[0]
    lower = dataclasses.replace(query, array=query.array[:liver_z.min() - 1].copy())
    boxes = localize_registration([template_from_phantom("t0", template)], lower, ["liver"])
    assert not boxes["liver"].present and boxes["liver"].box_ijk is None
    assert not all(boxes["liver"].details["points_inside"])


def test_bad_inputs_give_clear_errors(tmp_path, pair):
    template, query, _ = pair
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(VolumeError, match="cannot read"):
        read_volume(tmp_path / "junk.nii.gz")
    with pytest.raises(TemplateError, match="missing structure"):
        localize_registration([Template.from_volumes("t", template.image, template.labels, {"liver": 1})],
                              query, ["liver", "pancreas"])
    flat = Volume(np.zeros((1, 40, 40), np.int16), (1, 1, 1), name="flat")
    with pytest.raises(VolumeError, match="at least 8 voxels"):
        localize_registration([template_from_phantom("t0", template, ["liver"])], flat, ["liver"])


@pytest.fixture(scope="module")
def independent_pair():
    """Two independent subjects (organs differ in size, shape and place), labelled template and points-only twin."""
    shape = (48, 128, 128)
    template, query = make_phantom(0, shape_kji=shape), make_phantom(1, shape_kji=shape)
    return template_from_phantom("t0", template), query, template_from_phantom("q1", query)


def _ious(boxes, truth):
    return {name: box_iou_mm(boxes[name].box_lps_mm, lps_box_from_extreme_points(truth.extreme_points(name)))
            if boxes[name].present else 0.0 for name in LARGE}


def test_structure_local_stage_beats_global_affine_across_subjects(independent_pair):
    """Issue 4: box IoU >= 0.6 on the large organs of an independent subject, none collapsing. One global affine cannot
    follow per-organ differences; the masked per-structure affine must. Measured on this pair (deterministic):
    global-only 0.67 / 0.48 / 0.50 / 0.73 (liver, spleen, left and right kidney), with the local stage
    0.63 / 0.60 / 0.59 / 0.73 (mean 0.64)."""
    template, query, truth = independent_pair
    local = _ious(localize_registration([template], query.image, LARGE), truth)
    global_only = _ious(localize_registration([template], query.image, LARGE,
                                              config=RegistrationConfig(local=False)), truth)
    assert np.mean(list(local.values())) >= 0.6, local
    assert min(local.values()) >= 0.55, local
    assert np.mean(list(local.values())) > np.mean(list(global_only.values())) + 0.03, (local, global_only)
    assert min(local["spleen"], local["kidney_left"]) > max(global_only["spleen"], global_only["kidney_left"]) + 0.05


def test_points_only_template_uses_the_local_stage(independent_pair):
    """The demo's templates carry only 6 clicked points per organ: the local metric then looks inside the ellipsoid
    of their box; every structure must report its local refinement and land near the truth."""
    template, query, truth = independent_pair
    points = Template.from_volumes("points", template.image,
                                   points_lps={name: template.extreme_points(name) for name in LARGE})
    boxes = localize_registration([points], query.image, LARGE)
    ious = _ious(boxes, truth)
    assert np.mean(list(ious.values())) >= 0.5, ious
    for name in LARGE:
        info = boxes[name].details["local_registration"]
        assert len(info) == 1 and "metric_before" in info[0], info
        if info[0]["local"]:
            assert info[0]["metric_after"] < info[0]["metric_before"]


def test_bad_local_options_are_named():
    with pytest.raises(ValueError, match="local_metric"):
        RegistrationConfig(local_metric="nmi")
    with pytest.raises(ValueError, match="local_transform"):
        RegistrationConfig(local_transform="bspline")


def test_same_inputs_give_the_same_boxes(pair):
    """Single-threaded metric (the default) makes the result reproducible; ITK's threaded sums moved boxes by
    millimetres between identical runs."""
    template, query, _ = pair
    config = RegistrationConfig(local_iterations=30, rigid_iterations=30, affine_iterations=30)
    runs = [localize_registration([template_from_phantom("t0", template)], query, ["liver", "kidney_left"],
                                  config=config) for _ in range(2)]
    for name in ("liver", "kidney_left"):
        np.testing.assert_array_equal(runs[0][name].extreme_points_lps, runs[1][name].extreme_points_lps)


def test_a_query_read_from_a_file_gives_the_boxes_of_the_same_query_in_memory(tmp_path):
    """A file stores spacing times direction; read back, an axis-aligned volume's direction is 0.9999999999999999 on
    the diagonal. The volume takes it as the identity, so the batch (which reads files) and a caller holding the scan
    in memory (the demo, the Slicer panel) localize it the same."""
    template = make_phantom(0, shape_kji=SHAPE)
    query = make_phantom(1, shape_kji=SHAPE).image
    query = dataclasses.replace(query, spacing_mm=(1.4219304017953773, 1.4219304017953773, 5.097828875030899))
    read = read_volume(write_volume(query, tmp_path / "query.nrrd"))
    assert np.array_equal(read.direction, query.direction) and read.spacing_mm == query.spacing_mm
    config = RegistrationConfig(local_iterations=30, rigid_iterations=30, affine_iterations=30)
    runs = [localize_registration([template_from_phantom("t0", template)], volume, ["kidney_left"], config=config)
            for volume in (query, read)]
    np.testing.assert_array_equal(runs[0]["kidney_left"].extreme_points_lps, runs[1]["kidney_left"].extreme_points_lps)


def test_an_oblique_direction_keeps_its_cosines_and_an_axis_aligned_one_is_exact():
    cosine = np.cos(np.radians(30.0))
    oblique = np.array([[cosine, -0.5, 0.0], [0.5, cosine, 0.0], [0.0, 0.0, 1.0 - 1e-15]])
    volume = Volume(np.zeros((2, 3, 4), np.int16), (1.0, 1.0, 1.0), direction=oblique)
    np.testing.assert_array_equal(volume.direction[:2, :2], oblique[:2, :2])
    assert volume.direction[2, 2] == 1.0
    flipped = np.diag([-0.9999999999999999, 0.9999999999999999, -1.0])
    assert np.array_equal(Volume(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0), direction=flipped).direction,
                          np.diag([-1.0, 1.0, -1.0]))


def test_registration_images_share_one_pass():
    """The coarse and local registration images come from one read of the volume and sit on the expected grids."""
    from MedFoundationSegLib.localize.registration_global import registration_images

    volume = Volume(np.full((20, 30, 40), -1000, np.int16), (1.0, 1.0, 2.0), name="air")
    volume.array[5:15, 10:20, 10:30] = 40
    coarse, fine = registration_images(volume, (4.0, 2.0))
    assert fine.GetSpacing() == (2.0, 2.0, 2.0) and coarse.GetSpacing() == (4.0, 4.0, 4.0)
    array = __import__("SimpleITK").GetArrayViewFromImage(fine)
    assert array.min() >= 0.0 and array.max() <= 1.0 and array.max() > 0.5
    with pytest.raises(ValueError, match="metric"):
        RegistrationConfig(metric="nmi")
