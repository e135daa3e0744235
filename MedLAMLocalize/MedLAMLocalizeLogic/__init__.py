"""MRML-side Logic of the MedLAMLocalize module: template building from markups, localization, boxes as ROI nodes.

Qt-free (MRML, vtk, numpy and the engine), so it runs in 3D Slicer and under ``slicer-core`` in tests. A localization
is split into ``prepare_localization`` (GUI thread: reads the nodes and the panel's options into engine calls),
their ``compute`` (worker: the engine, no scene access) and ``apply_localization`` (GUI thread: ROI and point nodes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import yaml
from MedFoundationSegLib.core import terminology
from MedFoundationSegLib.core.boxes import POINT_NAMES, StructureBox, extreme_points_from_cloud
from MedFoundationSegLib.core.volume import Volume, write_volume
from MedFoundationSegLib.localize import engines
from MedFoundationSegLib.localize.templates import Template, TemplateError, TemplateSet
from MedFoundationSegLib.workflow.actions import EngineRequest, TemplateSpec
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLogic import mrml_bridge
from MedFoundationSegLogic.node_attributes import (
    CONFIDENCE_ATTRIBUTE,
    ENGINE_ATTRIBUTE,
    STRUCTURE_ATTRIBUTE,
    TERMINOLOGY_ATTRIBUTE,
    VOLUME_REFERENCE,
)

log = logging.getLogger(__name__)

# What the user is asked to click, in order (LPS axes: x grows to the patient's left, y to posterior, z to superior).
POINT_PROMPTS = (
    "x-min: the patient's right-most point",
    "x-max: the patient's left-most point",
    "y-min: the anterior-most point",
    "y-max: the posterior-most point",
    "z-min: the inferior-most point",
    "z-max: the superior-most point",
)


def next_point_prompt(points_placed: int) -> str:
    """The instruction shown while the user places extreme points (guides them point by point)."""
    if points_placed >= len(POINT_PROMPTS):
        return "All 6 extreme points placed: add the structure to the template set."
    return f"Next point ({points_placed + 1}/6): {POINT_PROMPTS[points_placed]}"


POINT_LABELS = tuple(POINT_NAMES)  # "x-min" ... "z-max": the label each placed point gets, in the order asked


def guide_point_list(markups_node) -> str:
    """Guide the user point by point *in the slice views*: placed points are labelled with the extreme they were
    asked for, and the label format of the next point is the next extreme's name, so the point under the mouse
    while placing already says which extreme it must be. Returns the instruction for the module panel."""
    placed = 0
    if markups_node is not None:
        for index in range(markups_node.GetNumberOfControlPoints()):
            if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
                continue
            if placed < len(POINT_LABELS) and markups_node.GetNthControlPointLabel(index) != POINT_LABELS[placed]:
                markups_node.SetNthControlPointLabel(index, POINT_LABELS[placed])
            placed += 1
        next_label = POINT_LABELS[placed] if placed < len(POINT_LABELS) else "extra point (remove it)"
        markups_node.SetControlPointLabelFormat(next_label)
    return next_point_prompt(placed)


def extreme_points_lps_from_markups(markups_node) -> np.ndarray:
    """(6, 3) LPS extreme points from a point list. Click order does not matter: each extreme is the point that is
    furthest along its axis, so a user who clicks out of order still gets a correct template."""
    points_ras = mrml_bridge.control_points_ras(markups_node)
    if len(points_ras) != 6:
        raise TemplateError(f"{markups_node.GetName() if markups_node else 'no point list'}: need exactly 6 extreme "
                            f"points, found {len(points_ras)}")
    return extreme_points_from_cloud(mrml_bridge.lps_from_ras(points_ras))


STRUCTURE_PROPERTIES_KEY = "structure_properties"


@dataclasses.dataclass
class EngineChoice:
    engine: str  # "medlam" | "registration"
    reason: str


def choose_engine(requested: str = "auto", medlam_weights="medlam") -> EngineChoice:
    """MedLAM when its weights are present (or explicitly asked for), otherwise registration — and say why."""
    return EngineChoice(*engines.choose_localizer(requested, medlam_weights))


@dataclasses.dataclass
class LocalizedNodes:
    roi_node: object
    points_node: object


@dataclasses.dataclass
class PreparedLocalization:
    """One query volume's localization, read from the scene on the GUI thread."""

    volume_node_id: str
    volume_name: str
    engine: EngineChoice
    request: EngineRequest
    runner: object = dataclasses.field(repr=False, default=None)  # the engine that runs it

    def compute(self, progress=None, cancelled=None) -> dict[str, StructureBox]:
        """Run to the end (scripts, tests); the widget uses ``start`` and polls the job instead."""
        return self.runner.run(self.request, progress, cancelled).boxes()

    def start(self):
        """A job whose ``result.boxes()`` are the structures' boxes once it is done."""
        return self.runner.submit(self.request, f"localize in {self.volume_name}")


def template_specs(template_set: TemplateSet) -> list[TemplateSpec]:
    """The template set as the engine receives it: volumes and points, no file paths."""
    return [TemplateSpec(t.name, t.image, t.labels, dict(t.label_ids),
                         {k: np.asarray(v, float).tolist() for k, v in t.points_lps.items()})
            for t in template_set.templates]


class MedLAMLocalizeLogic:
    """Template set editing and localization on a scene; the Widget calls only these methods."""

    def __init__(self, scene, engine=None):
        self.scene = scene
        self._engine = engine
        # What MedLAM runs with: a registry name (its weights must be in the cache), a path, a built network, or
        # None for seeded random weights (tests and timing).
        self.medlam_weights = "medlam"
        self.template_set = TemplateSet(templates=[])
        self._template_nodes: dict[str, str] = {}  # template name -> volume node ID
        self.colors: dict[str, tuple[float, float, float]] = {}
        self.terminology: dict[str, str] = {}  # structure -> Slicer TerminologyEntry tag (coded structures only)

    @property
    def engine(self):
        """The local engine process both modules share, unless another engine was given."""
        if self._engine is None:
            from MedFoundationSegLogic.engine_process import default_engine

            return default_engine()
        return self._engine

    # --- templates ------------------------------------------------------------------------------------------------
    def add_structure(self, volume_node, structure: str, markups_node, color_rgb=(0.9, 0.6, 0.2),
                      terminology_tag: str | None = "auto") -> Template:
        """Record a structure's 6 clicked extreme points on a template volume (adds the template if new).
        ``terminology_tag``: a Slicer TerminologyEntry string, "auto" (looked up from the name in terminology.yaml)
        or None (no coded terminology)."""
        structure = structure.strip()
        if not structure:
            raise TemplateError("give the structure a name")
        if terminology_tag == "auto":
            terminology_tag = terminology.tag_for_structure(structure)
        elif terminology_tag is not None:
            terminology.TerminologyEntry.from_tag(terminology_tag)  # a malformed tag is refused before any change
        volume = mrml_bridge.volume_from_node(volume_node)
        points_lps = extreme_points_lps_from_markups(markups_node)
        inside = np.all(volume.contains_ijk(volume.ijk_from_lps(points_lps), margin=1.0))
        if not inside:
            raise TemplateError(f"some extreme points of {structure!r} lie outside {volume_node.GetName()}")
        template = self._template_for(volume_node, volume)
        template.points_lps[structure] = template._checked_points(structure, points_lps)
        self.colors[structure] = tuple(float(c) for c in color_rgb)
        if terminology_tag:
            self.terminology[structure] = terminology_tag
        else:
            self.terminology.pop(structure, None)
        return template

    def _template_for(self, volume_node, volume: Volume) -> Template:
        for template in self.template_set.templates:
            if self._template_nodes.get(template.name) == volume_node.GetID():
                return template
        name = volume_node.GetName()
        template = Template.from_volumes(name, volume)
        self.template_set.templates.append(template)
        self._template_nodes[name] = volume_node.GetID()
        return template

    def template_volume_node_ids(self) -> set[str]:
        return set(self._template_nodes.values())

    def save_template_set(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """One YAML/JSON file plus the template volumes (NRRD) beside it, so the set reloads anywhere."""
        path = Path(path)
        for template in self.template_set.templates:
            if template.image_path is None or not Path(template.image_path).exists():
                image_path = path.parent / f"{path.stem}_{template.name}.nrrd"
                write_volume(template.image, image_path, overwrite=overwrite)
                template.image_path = image_path
        saved = self.template_set.save(path)
        self._write_structure_properties(saved)
        return saved

    def _write_structure_properties(self, path: Path) -> None:
        """Colour and terminology per structure, kept in the same template-set file (an extra top-level key the
        template-set reader ignores), so one file restores the whole set."""
        properties = {}
        for name in sorted(set(self.colors) | set(self.terminology)):
            entry = {}
            if name in self.colors:
                entry["color_rgb"] = [round(c, 4) for c in self.colors[name]]
            if name in self.terminology:
                entry["terminology"] = self.terminology[name]
            properties[name] = entry
        if not properties:
            return
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data[STRUCTURE_PROPERTIES_KEY] = properties
        text = (json.dumps(data, indent=2) if path.suffix.lower() == ".json"
                else yaml.safe_dump(data, sort_keys=False, width=1000))
        tmp = path.with_name(f".{path.name}.props.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def load_template_set(self, path: str | Path) -> TemplateSet:
        template_set = TemplateSet.load(path)
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        properties = data.get(STRUCTURE_PROPERTIES_KEY) or {}
        if not isinstance(properties, dict):
            raise TemplateError(f"{path}: '{STRUCTURE_PROPERTIES_KEY}' must map structure names to properties")
        colors, tags = {}, {}
        for name, entry in properties.items():
            if "color_rgb" in (entry or {}):
                color = entry["color_rgb"]
                if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
                    raise TemplateError(f"{path}: structure {name!r}: color_rgb must be 3 values in 0..1")
                colors[name] = tuple(float(c) for c in color)
            if (entry or {}).get("terminology"):
                try:
                    terminology.TerminologyEntry.from_tag(entry["terminology"])
                except terminology.TerminologyError as error:
                    raise TemplateError(f"{path}: structure {name!r}: {error}") from None
                tags[name] = entry["terminology"]
        self.template_set, self.colors, self.terminology = template_set, colors, tags
        self._template_nodes = {}
        return self.template_set

    # --- localization -----------------------------------------------------------------------------------------------
    def apply_localization(self, results: dict[str, StructureBox], query_volume_node) -> dict[str, LocalizedNodes]:
        """ROI box + extreme-point list per present structure (editable nodes); absent structures get none."""
        volume = mrml_bridge.volume_from_node(query_volume_node, copy=False)
        created = {}
        for name, result in results.items():
            if not result.present or result.box_ijk is None:
                log.info("%s: not found in %s (%s)", name, query_volume_node.GetName(),
                         result.details.get("reason", "a predicted point lies outside the volume"))
                continue
            color = self.colors.get(name, (0.9, 0.6, 0.2))
            roi = mrml_bridge.new_node(self.scene, "vtkMRMLMarkupsROINode", f"{name} box")
            mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(volume, result.box_ijk))
            roi.GetDisplayNode().SetSelectedColor(*color)
            points = mrml_bridge.new_node(self.scene, "vtkMRMLMarkupsFiducialNode", f"{name} extreme points")
            mrml_bridge.set_control_points_ras(points, result.extreme_points_ras, list(POINT_NAMES))
            points.GetDisplayNode().SetSelectedColor(*color)
            tag = self.terminology.get(name)
            for node in (roi, points):
                if tag:
                    node.SetAttribute(TERMINOLOGY_ATTRIBUTE, tag)
                node.SetAttribute(STRUCTURE_ATTRIBUTE, name)
                node.SetAttribute(ENGINE_ATTRIBUTE, result.engine)
                node.SetAttribute(CONFIDENCE_ATTRIBUTE, f"{result.confidence:.3f}")
                node.SetNodeReferenceID(VOLUME_REFERENCE, query_volume_node.GetID())
            created[name] = LocalizedNodes(roi, points)
        return created

    def prepare_localization(self, query_volume_nodes, options: Options | None = None,
                             structures=None) -> list[PreparedLocalization]:
        """Engine calls for each query volume: ``options`` holds the panel's engine, sub-patch (SPL) choice, slab
        thickness, MedLAM re-centring steps and seed. Refuses an empty template set or an unusable engine here,
        before anything is queued."""
        options = options or Options()
        if not self.template_set.templates:
            raise TemplateError("the template set is empty: add a structure or load a template set first")
        if not query_volume_nodes:
            raise ValueError("select a query volume (or tick 'All loaded volumes')")
        if options.spl and any(template.labels is None for template in self.template_set.templates):
            raise TemplateError("sub-patch localization needs templates with label volumes (a clicked template has "
                                "only its 6 points): untick 'Sub-patches' or load a template set with labels")
        choice = choose_engine(options.engine, self.medlam_weights)
        specs = template_specs(self.template_set)
        params = {"structures": structures, "medlam_weights": self.medlam_weights}
        prepared = []
        for node in query_volume_nodes:
            query = mrml_bridge.volume_from_node(node, copy=False)  # sent at once (an in-process engine copies it)
            request = EngineRequest("localize", query, options.replace(engine=choice.engine), params, {}, specs)
            prepared.append(PreparedLocalization(node.GetID(), node.GetName(), choice, request, self.engine))
        return prepared

    def localize(self, query_volume_node, options: Options | None = None, *, structures=None, progress=None,
                 cancelled=None) -> tuple[dict[str, StructureBox], dict[str, LocalizedNodes], EngineChoice]:
        """Synchronous convenience (prepare + compute + apply) for scripts and tests; the Widget runs the compute
        half on its worker."""
        (prepared,) = self.prepare_localization([query_volume_node], options, structures)
        results = prepared.compute(progress=progress, cancelled=cancelled)
        return results, self.apply_localization(results, query_volume_node), prepared.engine
