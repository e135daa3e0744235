"""Preprocessing to LAS/3 mm, extreme points from labels and point files, SPL slabs, template-set files."""

import json

import numpy as np
import pytest
from MedFoundationSegLib.core.boxes import StructureBox, lps_box_from_extreme_points, make_structure_box
from MedFoundationSegLib.core.volume import Volume, VolumeError, write_volume
from MedFoundationSegLib.localize.extreme_points import extreme_points_zyx, slab_points_zyx, split_count
from MedFoundationSegLib.localize.preprocess import MRWarning, hu_to_unit, kji_from_las_view, preprocess, to_las_view
from MedFoundationSegLib.localize.templates import Template, TemplateError, TemplateSet, read_markups, read_points_table


def _blob_volume(direction=np.eye(3), spacing=(2.0, 1.5, 3.0)):
    """A box-shaped 'organ' (label 1) of 250 HU inside -1000 HU air."""
    image = np.full((20, 24, 28), -1000, np.int16)
    labels = np.zeros(image.shape, np.uint8)
    labels[5:12, 6:15, 9:20] = 1
    image[labels == 1] = 250
    image_volume = Volume(image, spacing, (10.0, -20.0, 5.0), direction, name="img")
    return image_volume, image_volume.with_array(labels, name="lab")


def test_hu_map_knots():
    out = hu_to_unit(np.array([-2000, -1000, -600, -200, 0, 200, 850, 1500, 3000.0]))
    assert np.allclose(out, [0, 0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0])


def test_preprocess_grid_is_las_3mm_padded_and_geometry_exact():
    image, _ = _blob_volume()
    work = preprocess(image)
    assert work.modality == "CT" and work.spacing_mm == 3.0
    # field of view 20*3=60 mm (z), 24*1.5=36 (y), 28*2=56 (x) -> 20, 12, 19 voxels + 2*32 padding
    assert work.array.shape == (20 + 64, 12 + 64, 19 + 64)
    assert np.allclose(np.diag(work.ijk_to_lps[:3, :3]), [3, -3, 3])
    centre_lps = image.lps_from_ijk([[13.5, 11.5, 9.0]])  # a voxel centre inside the organ
    zyx = work.zyx_from_lps(centre_lps)
    assert np.allclose(work.lps_from_zyx(zyx), centre_lps)
    assert work.array[tuple(np.round(zyx[0]).astype(int))] == pytest.approx(0.8 + 50 / 1300 * 0.2, abs=0.02)
    assert work.array[:32].max() == 0.0  # padding is air


def test_preprocess_input_already_3mm_and_mr_warning():
    image, _ = _blob_volume(spacing=(3.0, 3.0, 3.0))
    assert preprocess(image).array.shape == (20 + 64, 24 + 64, 28 + 64)
    mr = image.with_array(np.abs(image.array.astype(np.float32)) * 0.3 + 5)
    with pytest.warns(MRWarning, match="trained on CT"):
        work = preprocess(mr)
    assert work.modality == "MR" and 0.0 <= work.array.min() and work.array.max() <= 1.0


def test_2d_image_is_rejected():
    flat = Volume(np.zeros((1, 32, 32), np.int16), (1, 1, 1), name="flat")
    with pytest.raises(VolumeError, match="at least 8 voxels"):
        preprocess(flat)


def test_las_view_round_trip_for_permuted_flipped_direction():
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    view = to_las_view(array, direction)
    rng = np.random.default_rng(0)
    for _ in range(10):
        p = np.array([rng.integers(0, n) for n in view.shape])
        kji = kji_from_las_view(p, array.shape, direction)[0].astype(int)
        assert array[tuple(kji)] == view[tuple(p)]


def test_extreme_points_reference_rule_on_a_small_mask():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:4, 2:5, 3:7] = True
    mask[4, 3, 4] = True  # a single-voxel tip on top: z-max point must be exactly there
    ref = extreme_points_zyx(mask)  # [zmin, ymin, xmin, zmax, ymax, xmax]
    assert ref[3].tolist() == [4, 3, 4]
    assert ref[0][0] == 1 and ref[1][1] == 2 and ref[2][2] == 3 and ref[4][1] == 4 and ref[5][2] == 6
    # zmin slice (y,x) raster order: 12 pixels, index 6 -> row 2+6//4=3, col 3+6%4=5
    assert ref[0].tolist() == [1, 3, 5]


def test_extreme_points_from_labels_are_physical_and_orientation_invariant():
    image, labels = _blob_volume()
    points = Template.from_volumes("t", image, labels, {"organ": 1}).extreme_points("organ")
    box = lps_box_from_extreme_points(points)
    kji = np.argwhere(labels.array == 1)
    lps = image.lps_from_ijk(kji[:, ::-1].astype(float))
    assert np.allclose(box, [lps.min(0), lps.max(0)])
    # the same physical content stored with permuted + flipped axes gives the same physical box
    perm_array = np.flip(np.transpose(labels.array, (2, 0, 1)), axis=1)  # new (k,j,i) = (old i, flipped old k, j)
    # new index axes: i' = old j, j' = old k reversed, k' = old i
    d = image.direction @ np.diag(image.spacing_mm)
    new_cols = np.stack([d[:, 1], -d[:, 2], d[:, 0]], axis=1)
    spacing = np.linalg.norm(new_cols, axis=0)
    origin = image.lps_from_ijk([[0, 0, labels.array.shape[0] - 1]])[0]
    permuted = Volume(perm_array, spacing, origin, new_cols / spacing)
    assert np.allclose(permuted.lps_from_ijk([[2, 3, 4]]), labels.lps_from_ijk([[4, 2, labels.shape_kji[0] - 1 - 3]]))
    points2 = Template.from_volumes("p", permuted.with_array(perm_array.astype(np.int16)), permuted,
                                    {"organ": 1}).extreme_points("organ")
    assert np.allclose(lps_box_from_extreme_points(points2), box)
    result = make_structure_box("organ", points2, permuted, "test", 1.0)
    kji2 = np.argwhere(perm_array == 1)
    assert result.box_ijk.tolist() == [kji2.min(0)[::-1].tolist(), kji2.max(0)[::-1].tolist()]


def test_spl_slabs_cover_the_structure_in_order():
    mask = np.zeros((30, 10, 10), bool)
    for z in range(3, 27):
        r = 1 + z % 4
        mask[z, 5 - r:5 + r, 2:4 + z // 6] = True
    assert split_count(z_extent_mm=23 * 3.0, slice_interval=2) == 6
    assert split_count(z_extent_mm=2 * 3.0, slice_interval=2) == 1
    slabs = slab_points_zyx(mask, 4)
    assert len(slabs) == 4
    z_lo = [s[0][0] for s in slabs]
    z_hi = [s[3][0] for s in slabs]
    assert z_lo[0] == 3 and z_hi[-1] == 26 and z_lo == sorted(z_lo)
    assert all(z_hi[i] == z_lo[i + 1] for i in range(3))  # slabs share their boundary slice, as in the reference
    for s in slabs:  # y/x walls are the mask's bounds inside the slab
        part = mask[int(s[0][0]):int(s[3][0]) + 1]
        xs = np.nonzero(part.any(axis=(0, 1)))[0]
        assert s[2][2] == xs[0] and s[5][2] == xs[-1]


def test_missing_structure_and_outside_points_are_clear_errors(tmp_path):
    image, labels = _blob_volume()
    empty = labels.with_array(np.zeros(labels.shape_kji, np.uint8))
    template = Template.from_volumes("t0", image, empty, {"organ": 1})
    with pytest.raises(TemplateError, match="'organ'.*empty.*every template must contain"):
        template.extreme_points("organ")
    with pytest.raises(TemplateError, match="missing structure.*'liver'"):
        TemplateSet([Template.from_volumes("t1", image, labels, {"organ": 1})]).check(["organ", "liver"])
    with pytest.raises(TemplateError, match="outside the template volume"):
        Template.from_volumes("t2", image, points_lps={"organ": np.array([[0, 0, 0], [900.0, 0, 0]])})


def test_point_files_markups_csv_json(tmp_path):
    image, labels = _blob_volume()
    points_lps = Template.from_volumes("t", image, labels, {"organ": 1}).extreme_points("organ")
    ras = points_lps * [-1, -1, 1]
    markups = {"markups": [{"type": "Fiducial", "name": "organ", "coordinateSystem": "RAS",
                            "controlPoints": [{"label": f"organ-{i}", "position": p} for i, p in enumerate(ras.tolist())]}]}
    (tmp_path / "p.mrk.json").write_text(json.dumps(markups))
    (tmp_path / "p.csv").write_text("structure,x,y,z\n" + "".join(f"organ,{x},{y},{z}\n" for x, y, z in points_lps))
    (tmp_path / "p.json").write_text(json.dumps({"coordinate_system": "RAS", "structures": {"organ": ras.tolist()}}))
    assert np.allclose(read_markups(tmp_path / "p.mrk.json")["organ"], points_lps)
    assert np.allclose(read_points_table(tmp_path / "p.csv", "LPS")["organ"], points_lps)
    assert np.allclose(read_points_table(tmp_path / "p.json")["organ"], points_lps)
    with pytest.raises(TemplateError, match="coordinate system must be stated"):
        read_points_table(tmp_path / "p.csv")


def test_template_set_round_trip(tmp_path):
    image, labels = _blob_volume()
    write_volume(image, tmp_path / "vol" / "img.nii.gz")
    write_volume(labels, tmp_path / "vol" / "lab.nii.gz")
    pts = Template.from_volumes("x", image, labels, {"organ": 1}).extreme_points("organ")
    (tmp_path / "vol" / "pts.json").write_text(json.dumps({"coordinate_system": "LPS",
                                                           "structures": {"other": pts.tolist()}}))
    t = Template("case0", image_path=tmp_path / "vol" / "img.nii.gz", labels_path=tmp_path / "vol" / "lab.nii.gz",
                 label_ids={"organ": 1}, points_file=tmp_path / "vol" / "pts.json")
    t.load_points_file()
    saved = TemplateSet([t]).save(tmp_path / "set" / "templates.yaml")
    loaded = TemplateSet.load(saved)
    assert loaded.structures() == ["organ", "other"]
    assert np.allclose(loaded.templates[0].extreme_points("organ"), pts)
    assert np.allclose(loaded.templates[0].extreme_points("other"), pts)
    (tmp_path / "bad.yaml").write_text("templates: [{name: a}]")
    with pytest.raises(TemplateError, match="needs an 'image'"):
        TemplateSet.load(tmp_path / "bad.yaml")
    with pytest.raises(TemplateError, match="not found"):
        TemplateSet.load(tmp_path / "nope.yaml")


def test_structure_box_json_round_trip_and_absent():
    image, labels = _blob_volume()
    pts = Template.from_volumes("x", image, labels, {"organ": 1}).extreme_points("organ")
    box = make_structure_box("organ", pts, image, "registration", 0.7, slab_points_lps=[pts, pts])
    again = StructureBox.from_dict(json.loads(json.dumps(box.to_dict())))
    assert again.box_ijk.tolist() == box.box_ijk.tolist() and len(again.slabs) == 2 and again.present
    far = pts + [0, 0, 500.0]
    absent = make_structure_box("organ", far, image, "registration", 0.7)
    assert not absent.present and absent.box_ijk is None
