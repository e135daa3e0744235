"""MedLAMLocalize Logic on a real MRML scene: clicked extreme points on a template volume -> registration
localization on another volume -> editable ROI and point-list nodes whose RAS bounds hold the structure."""

from __future__ import annotations

import numpy as np
import pytest
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.templates import TemplateError, TemplateSet, structure_points_from_mask
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLogic import mrml_bridge
from MedLAMLocalizeLogic import MedLAMLocalizeLogic, choose_engine, next_point_prompt
from mrml_scene import add_volume_node

SHAPE = (40, 96, 96)
FLIP = np.diag([-1.0, 1.0, -1.0])  # i runs right->left... flipped, non-identity IJK-to-RAS


def _flipped(volume: Volume, shift_lps_mm=(0.0, 0.0, 0.0)) -> Volume:
    """Same anatomy, stored with i and k reversed (and optionally moved): non-identity IJK-to-RAS end to end."""
    array = volume.array[::-1, :, ::-1].copy()
    origin = volume.lps_from_ijk([[volume.shape_kji[2] - 1, 0, volume.shape_kji[0] - 1]])[0] + shift_lps_mm
    return Volume(array, volume.spacing_mm, tuple(origin), volume.direction @ FLIP, volume.name)


@pytest.fixture(scope="module")
def phantoms():
    return make_phantom(1, SHAPE), make_phantom(2, SHAPE)


def _click_points(scene, template_volume: Volume, labels: Volume, label: int, shuffle: bool):
    """The 6 extreme points a user would click, as a markups point list (RAS), optionally out of order."""
    points_lps = structure_points_from_mask(labels, labels.array == label)
    points_ras = mrml_bridge.ras_from_lps(points_lps)
    if shuffle:
        points_ras = points_ras[[3, 0, 5, 1, 4, 2]]
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    mrml_bridge.set_control_points_ras(node, points_ras)
    return node, points_lps


def test_point_guidance_text():
    assert next_point_prompt(0).startswith("Next point (1/6): x-min")
    assert "superior" in next_point_prompt(5)
    assert "All 6" in next_point_prompt(6)


def test_template_from_clicks_then_localize_gives_boxes(mrml, phantoms, tmp_path, isolated_cache):
    """The query is the template anatomy stored flipped and moved 12 mm: the plumbing (RAS/LPS, flips, ROI bounds)
    must then put every box around its structure. Localization accuracy across subjects is the engines' tests' job."""
    scene, _ = mrml
    template_ph, query_ph = phantoms[0], phantoms[0]
    template_node = add_volume_node(scene, _flipped(template_ph.image), "template")
    shift = (12.0, -7.0, 9.0)
    query_image = _flipped(query_ph.image, shift)
    query_labels = _flipped(query_ph.labels, shift)
    query_node = add_volume_node(scene, query_image, "query")

    logic = MedLAMLocalizeLogic(scene)
    for index, name in enumerate(("liver", "spleen")):
        clicks, expected_lps = _click_points(scene, _flipped(template_ph.image), _flipped(template_ph.labels),
                                             template_ph.label_ids[name], shuffle=index == 1)
        template = logic.add_structure(template_node, name, clicks, color_rgb=(0.1 * index, 0.5, 0.9))
        assert np.allclose(template.points_lps[name], expected_lps)
    assert logic.template_set.structures() == ["liver", "spleen"]

    choice = choose_engine("auto")
    assert choice.engine == "registration" and "MedLAM weights missing" in choice.reason
    results, nodes, _ = logic.localize(query_node)
    assert set(nodes) == {"liver", "spleen"}
    for name, created in nodes.items():
        bounds = mrml_bridge.roi_bounds_ras(created.roi_node)
        mask = query_labels.array == query_ph.label_ids[name]
        k, j, i = np.nonzero(mask)
        truth_ras = mrml_bridge.ras_from_lps(query_image.lps_from_ijk(np.stack([i, j, k], 1)))
        tolerance_mm = 1.5 * np.array(query_image.spacing_mm)[[0, 1, 2]].max()
        assert np.all(bounds[0] <= truth_ras.min(0) + tolerance_mm), (name, bounds, truth_ras.min(0))
        assert np.all(truth_ras.max(0) - tolerance_mm <= bounds[1]), (name, bounds, truth_ras.max(0))
        assert np.all(bounds[1] - bounds[0] <= np.ptp(truth_ras, axis=0) + 4 * tolerance_mm)  # and the box is tight
        assert created.points_node.GetNumberOfControlPoints() == 6
        assert created.roi_node.GetAttribute("MedLAMLocalize.Engine") == "registration"

    saved = logic.save_template_set(tmp_path / "set.yaml")
    reloaded = TemplateSet.load(saved)
    assert reloaded.structures() == ["liver", "spleen"]
    assert np.allclose(reloaded.templates[0].points_lps["liver"], logic.template_set.templates[0].points_lps["liver"])
    assert np.allclose(reloaded.templates[0].image.ijk_to_lps, _flipped(template_ph.image).ijk_to_lps, atol=1e-4)


def test_bad_clicks_are_refused(mrml, phantoms):
    scene, _ = mrml
    template_ph, _ = phantoms
    node = add_volume_node(scene, template_ph.image, "template")
    logic = MedLAMLocalizeLogic(scene)
    too_few = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "few")
    mrml_bridge.set_control_points_ras(too_few, np.zeros((4, 3)))
    with pytest.raises(TemplateError, match="exactly 6"):
        logic.add_structure(node, "liver", too_few)
    far = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "far")
    mrml_bridge.set_control_points_ras(far, np.random.default_rng(0).normal(5000, 10, (6, 3)))
    with pytest.raises(TemplateError, match="outside"):
        logic.add_structure(node, "liver", far)
    assert logic.template_set.templates == []
