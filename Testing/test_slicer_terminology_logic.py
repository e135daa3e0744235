"""Standard terminology, extreme-point guidance, absent structures and re-running stored prompts, on a real MRML scene
(slicer-core). Tags are checked with Slicer's own terminology logic (its deserializer reads what we write) and through
a .seg.nrrd written and read by Slicer's segmentation storage node."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
import yaml
from MedFoundationSegLib.core import terminology
from MedFoundationSegLib.core.boxes import StructureBox
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.templates import TemplateError, structure_points_from_mask
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLogic import mrml_bridge
from MedFoundationSegLogic.logic import MedFoundationSegLogic
from MedFoundationSegLogic.segment_edits import SegmentEditHistory
from MedLAMLocalizeLogic import POINT_LABELS, MedLAMLocalizeLogic, guide_point_list
from mrml_scene import add_volume_node, read_segmentation_file, write_segmentation_file

DIRECTION = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # flipped i and k


def _volume(shape_kji=(10, 18, 14)):
    rng = np.random.default_rng(1)
    return Volume(rng.integers(-50, 50, shape_kji).astype(np.int16), spacing_mm=(0.9, 1.2, 3.0),
                  origin_lps_mm=(20.0, -15.0, 60.0), direction=DIRECTION, name="ct")


def _slicer_parse(tag: str):
    """Slicer's own reading of a TerminologyEntry string (vtkSlicerTerminologiesModuleLogic)."""
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic().DeserializeTerminologyEntry(tag, entry)
    return entry


# --- the tag format ---------------------------------------------------------------------------------------------------
def test_tag_name_is_slicers():
    assert terminology.TAG_NAME == slicer.vtkSegment.GetTerminologyEntryTagName()


@pytest.mark.parametrize("name, code, meaning, modifier", [
    ("liver", "10200004", "Liver", None),
    ("Spleen", "78961009", "Spleen", None),
    ("kidney_right", "64033007", "Kidney", "Right"),
    ("Left kidney", "64033007", "Kidney", "Left"),
    ("adrenal_left", "23451007", "Adrenal gland", "Left"),
    ("aorta", "15825003", "Aorta", None),
    ("gall-bladder", "28231008", "Gallbladder", None),
])
def test_organ_names_map_to_slicer_general_anatomy_codes(name, code, meaning, modifier):
    tag = terminology.tag_for_structure(name)
    entry = _slicer_parse(tag)
    assert entry.GetTerminologyContextName() == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert (entry.GetCategoryObject().GetCodingSchemeDesignator(), entry.GetCategoryObject().GetCodeValue()) == \
        ("SCT", "123037004")
    assert (entry.GetTypeObject().GetCodingSchemeDesignator(), entry.GetTypeObject().GetCodeValue(),
            entry.GetTypeObject().GetCodeMeaning()) == ("SCT", code, meaning)
    assert (entry.GetTypeModifierObject().GetCodeMeaning() or None) == modifier
    # Slicer serializes the parsed entry back to exactly our string: same format, field for field.
    assert slicer.vtkSlicerTerminologiesModuleLogic().SerializeTerminologyEntry(entry) == tag
    assert terminology.TerminologyEntry.from_tag(tag).to_tag() == tag


@pytest.mark.parametrize("name", ["spine", "AI segment", "left liver", "right left kidney", ""])
def test_unknown_or_contradictory_names_get_no_code(name):
    assert terminology.tag_for_structure(name) is None


@pytest.mark.parametrize("bad, problem", [
    ("Liver", "7 '~'-separated fields"),
    ("ctx~SCT^1^A~SCT^2~^^~x~^^~^^", r"SCT\^2. is not .scheme\^value\^meaning"),
    ("ctx~^^~SCT^2^B~^^~x~^^~^^", "no category"),
])
def test_malformed_tags_are_refused_with_the_reason(bad, problem):
    with pytest.raises(terminology.TerminologyError, match=problem):
        terminology.TerminologyEntry.from_tag(bad)


def test_map_errors_name_the_entry():
    data = yaml.safe_load(terminology.MAP_PATH.read_text(encoding="utf-8"))
    data["structures"]["lung"] = {"value": "39607008", "meaning": "Lung", "synonyms": ["liver"]}
    with pytest.raises(terminology.TerminologyError, match="'liver' is already used"):
        terminology.parse_map(data)
    del data["structures"]["lung"]
    data["structures"]["liver"]["color_rgb255"] = [300, 0, 0]
    with pytest.raises(terminology.TerminologyError, match="structure 'liver'.*0..255"):
        terminology.parse_map(data)


def test_choices_list_every_coded_structure_with_laterality():
    labels = dict(terminology.choices())
    assert {"Liver", "Kidney, Right", "Kidney, Left", "Adrenal gland, Left"} <= set(labels)
    assert "Kidney" not in labels  # lateral organs are offered with a side only
    assert all(_slicer_parse(tag) for tag in labels.values())


# --- segments: tag written on creation, kept in .seg.nrrd ---------------------------------------------------------
def test_ai_segment_terminology_round_trips_through_seg_nrrd(mrml, tmp_path):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    user_id = seg.GetSegmentation().AddEmptySegment("", "my lesion", [0.2, 0.9, 0.2])
    mask = np.zeros(volume.shape_kji, bool)
    mask[2:6, 3:9, 4:10] = True
    history = SegmentEditHistory(scene)
    tag = terminology.tag_for_structure("kidney_left")
    created = history.apply(node, seg, mask, segment_name="kidney_left", terminology_tag=tag, action="segment")
    # An existing segment keeps the terminology it had (Slicer gives new segments a generic "Tissue" entry).
    users_own = terminology.get_segment_terminology(seg.GetSegmentation().GetSegment(user_id))
    assert users_own != tag
    history.apply(node, seg, mask & False, segment_id=user_id, terminology_tag=tag, action="refine")
    assert terminology.get_segment_terminology(seg.GetSegmentation().GetSegment(user_id)) == users_own

    path = tmp_path / "kidney.seg.nrrd"
    write_segmentation_file(scene, seg, path)
    loaded = read_segmentation_file(scene, path)
    read_tag = terminology.get_segment_terminology(loaded.GetSegmentation().GetSegment(created.segment_id))
    assert read_tag == tag
    assert _slicer_parse(read_tag).GetTypeModifierObject().GetCodeMeaning() == "Left"
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(loaded, created.segment_id, node) > 0, mask)


def test_malformed_tag_creates_nothing(mrml):
    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(terminology.TerminologyError):
        SegmentEditHistory(scene).apply(node, seg, np.ones(volume.shape_kji, bool), terminology_tag="liver")
    assert seg.GetSegmentation().GetNumberOfSegments() == 0


# --- MedLAMLocalize: guidance, terminology of structures, absent structures, the one template-set file ---------------
@pytest.fixture(scope="module")
def phantom():
    return make_phantom(4, (32, 72, 72))


def _clicks(scene, phantom, name):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} clicks")
    points = structure_points_from_mask(phantom.labels, phantom.mask(name))
    return node, mrml_bridge.ras_from_lps(points)


def test_point_list_guides_the_user_in_the_slice_views(mrml, phantom):
    scene, _ = mrml
    node, points_ras = _clicks(scene, phantom, "liver")
    assert "(1/6)" in guide_point_list(node) and node.GetControlPointLabelFormat() == "x-min"
    for index, point in enumerate(points_ras):
        node.AddControlPoint(*map(float, point))  # the default label ("liver clicks-1") is replaced
        prompt = guide_point_list(node)
        assert [node.GetNthControlPointLabel(i) for i in range(index + 1)] == list(POINT_LABELS[:index + 1])
        if index < 5:
            assert f"({index + 2}/6)" in prompt
            assert node.GetControlPointLabelFormat() == POINT_LABELS[index + 1]  # shown on the point being placed
    assert "All 6" in prompt


def test_structures_carry_terminology_to_boxes_and_template_file(mrml, phantom, tmp_path):
    scene, _ = mrml
    volume_node = add_volume_node(scene, phantom.image, "template")
    logic = MedLAMLocalizeLogic(scene)
    for name, tag in (("liver", "auto"), ("kidney_right", "auto"), ("spine", "auto"),
                      ("spleen", terminology.tag_for_structure("liver"))):  # a user's explicit pick wins
        clicks, points = _clicks(scene, phantom, name)
        mrml_bridge.set_control_points_ras(clicks, points)
        logic.add_structure(volume_node, name, clicks, color_rgb=(0.1, 0.2, 0.3), terminology_tag=tag)
    assert set(logic.terminology) == {"liver", "kidney_right", "spleen"}  # "spine" has no coded entry
    assert _slicer_parse(logic.terminology["spleen"]).GetTypeObject().GetCodeMeaning() == "Liver"
    bad, points = _clicks(scene, phantom, "stomach")
    mrml_bridge.set_control_points_ras(bad, points)
    with pytest.raises(terminology.TerminologyError):
        logic.add_structure(volume_node, "stomach", bad, terminology_tag="Stomach")
    assert "stomach" not in logic.template_set.templates[0].points_lps

    saved = logic.save_template_set(tmp_path / "set.yaml")
    reloaded = MedLAMLocalizeLogic(scene)
    reloaded.load_template_set(saved)
    assert reloaded.terminology == logic.terminology
    assert reloaded.colors == logic.colors
    assert sorted(reloaded.template_set.structures()) == ["kidney_right", "liver", "spine", "spleen"]

    # Boxes: present structures get an ROI + point list tagged with the terminology; an absent one gets nothing.
    points = reloaded.template_set.templates[0].points_lps
    results = {
        "liver": StructureBox("liver", points["liver"], np.array([[5, 5, 3], [40, 40, 20]]),
                              np.array([points["liver"].min(0), points["liver"].max(0)]), 0.9, True, "registration"),
        "kidney_right": StructureBox("kidney_right", points["kidney_right"], None, None, 0.1, False, "registration",
                                     details={"reason": "predicted outside the volume"}),
    }
    nodes = reloaded.apply_localization(results, volume_node)
    assert set(nodes) == {"liver"}
    assert nodes["liver"].roi_node.GetAttribute("MedLAMLocalize.Terminology") == logic.terminology["liver"]
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")
                if n.GetAttribute("MedLAMLocalize.Structure") == "kidney_right"]


def test_broken_structure_properties_are_refused(mrml, tmp_path, phantom):
    scene, _ = mrml
    volume_node = add_volume_node(scene, phantom.image, "template")
    logic = MedLAMLocalizeLogic(scene)
    clicks, points = _clicks(scene, phantom, "liver")
    mrml_bridge.set_control_points_ras(clicks, points)
    logic.add_structure(volume_node, "liver", clicks)
    saved = logic.save_template_set(tmp_path / "set.json")
    data = yaml.safe_load(saved.read_text())
    data["structure_properties"]["liver"]["terminology"] = "Liver"
    saved.write_text(yaml.safe_dump(data))
    with pytest.raises(TemplateError, match="structure 'liver'.*7 '~'-separated"):
        MedLAMLocalizeLogic(scene).load_template_set(saved)


# --- re-running a segment's stored prompts ---------------------------------------------------------------------------
def test_rerun_reads_the_edited_roi_and_writes_one_undo_step(mrml):
    """Stored prompts -> the same action rebuilt; the moved ROI is read again. No model needed: the compute step is
    checked through its prepared inputs, and apply() gets a stand-in result."""
    from MedFoundationSegLib.workflow.results import CaseResult

    scene, _ = mrml
    volume = _volume()
    node = add_volume_node(scene, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAttribute("MedLAMLocalize.Terminology", terminology.tag_for_structure("spleen"))
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(volume, np.array([[2, 3, 1], [8, 9, 5]])))
    logic = MedFoundationSegLogic(scene)
    first = logic.prepare_segment_in_roi(node, roi, seg)
    assert first.request.params["box_ijk"] == [[2, 3, 1], [8, 9, 5]]

    def result(mask):
        return CaseResult(mask_kji=mask, report={"mode": "guided"})

    mask = np.zeros(volume.shape_kji, bool)
    mask[1:6, 3:10, 2:9] = True
    edit = logic.apply(first, result(mask), segment_name="AI segment")
    segment = seg.GetSegmentation().GetSegment(edit.segment_id)
    assert terminology.get_segment_terminology(segment) == terminology.tag_for_structure("spleen")  # from the box

    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(volume, np.array([[4, 3, 1], [12, 9, 7]])))
    again = logic.prepare_rerun(node, seg, edit.segment_id)
    assert again.action == "segment in box" and again.segment_id == edit.segment_id
    assert again.request.params["box_ijk"] == [[4, 3, 1], [12, 9, 7]]  # the edited box
    smaller = mask & False
    smaller[2:4, 4:6, 5:8] = True
    logic.apply(again, result(smaller))
    assert (mrml_bridge.segment_mask_kji(seg, edit.segment_id, node)).sum() == smaller.sum()
    assert logic.undo() == "segment in box"
    assert np.array_equal(mrml_bridge.segment_mask_kji(seg, edit.segment_id, node), mask)

    scene.RemoveNode(roi)  # the box node is gone: the stored RAS box is used
    assert logic.prepare_rerun(node, seg, edit.segment_id).request.params["box_ijk"] == [[2, 3, 1], [8, 9, 5]]
    user_id = seg.GetSegmentation().AddEmptySegment("", "hand drawn", [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="no stored AI prompts"):
        logic.prepare_rerun(node, seg, user_id)
