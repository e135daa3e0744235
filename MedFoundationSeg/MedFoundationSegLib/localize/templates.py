"""Templates (a.k.a. supports): a volume plus, per structure, 6 physical extreme points; and template sets on disk.

Points come from a label volume (the reference's "median raster pixel on each extreme slice" rule, computed on the
original grid viewed in LAS order, so no resampling error), from Slicer ``.mrk.json`` markups, or from a CSV/JSON of
points whose coordinate system (LPS or RAS) is stated. A template set is one YAML/JSON file pointing at the volumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import yaml

from MedFoundationSegLib.core.boxes import extreme_points_from_cloud, points_inside
from MedFoundationSegLib.core.volume import LPS_TO_RAS, Volume, read_volume
from MedFoundationSegLib.localize.extreme_points import (
    TemplateError,
    slab_points_from_mask,
    structure_points_from_mask,
    z_extent_mm,
)

SET_FORMAT = "medlam-template-set"


# --- point files ---------------------------------------------------------------------------------------------------
def _to_lps(points: np.ndarray, system: str, where: str) -> np.ndarray:
    system = (system or "").upper()
    if system not in ("LPS", "RAS"):
        raise TemplateError(f"{where}: coordinate system must be stated as LPS or RAS; got {system or 'nothing'!r}")
    points = np.asarray(points, float).reshape(-1, 3)
    return points @ LPS_TO_RAS if system == "RAS" else points


def read_markups(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Slicer ``.mrk.json`` -> name -> (N,3) LPS points. A control point labelled ``<structure>:<anything>``
    belongs to ``<structure>``; otherwise to its node (node name = structure name)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TemplateError(f"cannot read markups file {path}: {error}") from None
    nodes = data.get("markups") if isinstance(data, dict) else None
    if not nodes:
        raise TemplateError(f"{path} has no 'markups' list; is it a Slicer .mrk.json file?")
    out: dict[str, list] = {}
    for index, node in enumerate(nodes):
        system = node.get("coordinateSystem", "LPS")
        for point in node.get("controlPoints", []):
            label = str(point.get("label", ""))
            name = label.split(":")[0].strip() if ":" in label else (node.get("name") or label).strip()
            if not name:
                raise TemplateError(f"{path}: node {index} has no name and a control point has no label")
            out.setdefault(name, []).append(_to_lps(point["position"], system, f"{path} node {index}")[0])
    return {name: np.asarray(points) for name, points in out.items()}


def read_points_table(path: str | os.PathLike, coordinate_system: str | None = None) -> dict[str, np.ndarray]:
    """CSV (columns ``structure,x,y,z`` and optionally ``coordinate_system``) or JSON
    (``{"coordinate_system": "LPS"|"RAS", "structures": {name: [[x,y,z], ...]}}``) -> name -> (N,3) LPS points."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"points file not found: {path}")
    if path.name.endswith(".mrk.json"):
        return read_markups(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        system = data.get("coordinate_system", coordinate_system)
        structures = data.get("structures")
        if not isinstance(structures, dict):
            raise TemplateError(f"{path}: expected a 'structures' mapping of name -> list of [x, y, z]")
        return {name: _to_lps(points, system, str(path)) for name, points in structures.items()}
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        out: dict[str, list] = {}
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            missing = [c for c in ("structure", "x", "y", "z") if c not in fields]
            if missing:
                raise TemplateError(f"{path}: missing column(s) {missing}; need structure,x,y,z")
            for line, row in enumerate(reader, start=2):
                system = row.get(fields.get("coordinate_system", ""), None) or coordinate_system
                try:
                    xyz = [float(row[fields[c]]) for c in ("x", "y", "z")]
                except ValueError:
                    raise TemplateError(f"{path} line {line}: x, y, z must be numbers") from None
                out.setdefault(row[fields["structure"]].strip(), []).append(_to_lps(xyz, system, f"{path} line {line}")[0])
        return {name: np.asarray(p) for name, p in out.items()}
    raise TemplateError(f"{path}: unknown points format; use .mrk.json, .json or .csv")


# --- templates -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Template:
    """One support volume with physical extreme points per structure (and optionally its label volume)."""

    name: str
    image_path: Path | None = None
    labels_path: Path | None = None
    label_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    points_lps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (6,3)
    points_file: Path | None = None
    points_coordinate_system: str | None = None
    _image: Volume | None = dataclasses.field(default=None, repr=False)
    _labels: Volume | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_volumes(cls, name: str, image: Volume, labels: Volume | None = None,
                     label_ids: dict[str, int] | None = None, points_lps: dict[str, np.ndarray] | None = None
                     ) -> "Template":
        template = cls(name=name, label_ids=dict(label_ids or {}), _image=image, _labels=labels)
        if labels is not None and labels.shape_kji != image.shape_kji:
            raise TemplateError(f"template {name!r}: labels shape {labels.shape_kji} != image {image.shape_kji}")
        for structure, points in (points_lps or {}).items():
            template.points_lps[structure] = template._checked_points(structure, points)
        return template

    @property
    def image(self) -> Volume:
        if self._image is None:
            if self.image_path is None:
                raise TemplateError(f"template {self.name!r} has no image")
            self._image = read_volume(self.image_path)
        return self._image

    @property
    def labels(self) -> Volume | None:
        if self._labels is None and self.labels_path is not None:
            self._labels = read_volume(self.labels_path)
            if self._labels.shape_kji != self.image.shape_kji:
                raise TemplateError(f"template {self.name!r}: labels {self.labels_path} shape "
                                    f"{self._labels.shape_kji} != image shape {self.image.shape_kji}")
        return self._labels

    def _checked_points(self, structure: str, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, float)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
            raise TemplateError(f"template {self.name!r} structure {structure!r}: need at least 2 points (x,y,z); "
                                f"got shape {points.shape}")
        extreme = extreme_points_from_cloud(points)
        inside = points_inside(self.image.ijk_to_lps, self.image.shape_kji, extreme, margin_voxels=0.5)
        if not inside.all():
            flipped = points_inside(self.image.ijk_to_lps, self.image.shape_kji, extreme @ LPS_TO_RAS, 0.5).all()
            hint = " (read in the other coordinate system, RAS vs LPS, they would lie inside: check it)" if flipped \
                else ""
            raise TemplateError(f"template {self.name!r} structure {structure!r}: point(s) "
                                f"{np.round(extreme[~inside], 1).tolist()} (LPS mm) lie outside the template volume"
                                + hint)
        extent_mm = np.ptp(extreme, axis=0)
        if np.any(extent_mm < 0.5 * min(self.image.spacing_mm)):
            axis = "xyz"[int(np.argmin(extent_mm))]
            raise TemplateError(f"template {self.name!r} structure {structure!r}: its extreme points span "
                                f"{extent_mm.min():.1f} mm along {axis}; place the 6 points on the structure's "
                                "6 different sides")
        return extreme

    def load_points_file(self) -> None:
        if self.points_file is None:
            return
        for structure, points in read_points_table(self.points_file, self.points_coordinate_system).items():
            if structure not in self.points_lps:
                self.points_lps[structure] = self._checked_points(structure, points)

    def mask(self, structure: str) -> np.ndarray:
        labels = self.labels
        if labels is None or structure not in self.label_ids:
            raise TemplateError(f"template {self.name!r} has no label volume entry for {structure!r}")
        mask = labels.array == self.label_ids[structure]
        if not mask.any():
            raise TemplateError(f"template {self.name!r}: structure {structure!r} (label {self.label_ids[structure]})"
                                " is empty in its label volume; every template must contain every structure")
        return mask

    def has(self, structure: str) -> bool:
        return structure in self.points_lps or structure in self.label_ids

    def structures(self) -> list[str]:
        return sorted(set(self.points_lps) | set(self.label_ids))

    def extreme_points(self, structure: str) -> np.ndarray:
        """(6,3) LPS extreme points; explicit points win, else derived from the label volume (then cached)."""
        if structure not in self.points_lps:
            if structure not in self.label_ids:
                raise TemplateError(f"template {self.name!r} has no structure {structure!r}; it has "
                                    f"{self.structures()}. Every template must contain every requested structure")
            self.points_lps[structure] = structure_points_from_mask(self.labels, self.mask(structure))
        return self.points_lps[structure]

    def slab_points(self, structure: str, split_num: int) -> list[np.ndarray]:
        if structure not in self.label_ids:
            raise TemplateError(f"SPL needs a label volume: template {self.name!r} gives only points for "
                                f"{structure!r}")
        return slab_points_from_mask(self.labels, self.mask(structure), split_num)

    def z_extent_mm(self, structure: str) -> float:
        if structure in self.label_ids:
            return z_extent_mm(self.labels, self.mask(structure))
        points = self.extreme_points(structure)
        return float(points[5, 2] - points[4, 2])

    def to_entry(self, base: Path) -> dict:
        def rel(path):
            if path is None:
                return None
            try:
                return os.path.relpath(Path(path).resolve(), base.resolve())
            except ValueError:  # another drive on Windows
                return str(Path(path).resolve())

        entry = {"name": self.name, "image": rel(self.image_path)}
        if self.labels_path is not None:
            entry["labels"] = rel(self.labels_path)
            entry["label_ids"] = dict(self.label_ids)
        if self.points_file is not None:
            entry["points"] = rel(self.points_file)
            if self.points_coordinate_system:
                entry["points_coordinate_system"] = self.points_coordinate_system
        explicit = {k: v for k, v in self.points_lps.items() if k not in self.label_ids}
        if explicit and self.points_file is None:
            entry["structures"] = {k: {"coordinate_system": "LPS", "points": np.round(v, 4).tolist()}
                                   for k, v in explicit.items()}
        return entry


@dataclasses.dataclass
class TemplateSet:
    templates: list[Template]
    path: Path | None = None
    feature_cache: dict = dataclasses.field(default_factory=dict, repr=False)  # filled by the MedLAM engine

    def structures(self) -> list[str]:
        """Structures every template has (the only ones that can be localized)."""
        if not self.templates:
            return []
        common = set(self.templates[0].structures())
        for template in self.templates[1:]:
            common &= set(template.structures())
        return sorted(common)

    def check(self, structures: list[str]) -> None:
        if not self.templates:
            raise TemplateError("the template set is empty")
        if not structures:
            held = "; ".join(f"{t.name!r} has {t.structures() or 'none'}" for t in self.templates)
            raise TemplateError(f"the templates share no structure to localize ({held}); every template must hold "
                                "every structure")
        for template in self.templates:
            missing = [s for s in structures if not template.has(s)]
            if missing:
                raise TemplateError(f"template {template.name!r} is missing structure(s) {missing}; it has "
                                    f"{template.structures()}. Every template must contain every requested structure")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        base = path.parent
        for template in self.templates:
            if template.image_path is None:
                raise TemplateError(f"template {template.name!r} has no image file; write its volume first")
        data = {"format": SET_FORMAT, "version": 1, "templates": [t.to_entry(base) for t in self.templates]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        text = json.dumps(data, indent=2) if path.suffix.lower() == ".json" else yaml.safe_dump(data, sort_keys=False)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TemplateSet":
        path = Path(path)
        if not path.is_file():
            raise TemplateError(f"template set file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise TemplateError(f"{path} is not a template set file (invalid YAML/JSON{where}: "
                                f"{getattr(error, 'problem', None) or 'unreadable'})") from None
        if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
            raise TemplateError(f"{path}: expected a mapping with a 'templates' list")
        base = path.parent

        def resolve(value):
            return None if value is None else (base / value if not Path(value).is_absolute() else Path(value))

        templates = []
        for index, entry in enumerate(data["templates"]):
            if not isinstance(entry, dict) or "image" not in entry:
                raise TemplateError(f"{path}: template #{index} needs an 'image' entry")
            template = Template(name=str(entry.get("name", f"template{index}")), image_path=resolve(entry["image"]),
                                labels_path=resolve(entry.get("labels")),
                                label_ids={str(k): int(v) for k, v in (entry.get("label_ids") or {}).items()},
                                points_file=resolve(entry.get("points")),
                                points_coordinate_system=entry.get("points_coordinate_system"))
            if template.labels_path is not None and not template.label_ids:
                raise TemplateError(f"{path}: template {template.name!r} has labels but no 'label_ids' mapping")
            for structure, spec in (entry.get("structures") or {}).items():
                points = _to_lps(spec["points"], spec.get("coordinate_system"), f"{path} {template.name}/{structure}")
                template.points_lps[structure] = template._checked_points(structure, points)
            template.load_points_file()
            templates.append(template)
        return cls(templates=templates, path=path)
