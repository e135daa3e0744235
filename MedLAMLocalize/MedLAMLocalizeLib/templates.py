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

from MedFoundationSegLib.volume import LPS_TO_RAS, Volume, VolumeError, read_volume

from .boxes import REF_TO_LPS, extreme_points_from_cloud, points_inside
from .preprocess import kji_from_las_view, las_axis_map, to_las_view

SET_FORMAT = "medlam-template-set"
MAX_SLABS = 6


class TemplateError(ValueError):
    """A template or template set is unusable (names the file, template and structure)."""


# --- extreme points from a mask (reference rule) -------------------------------------------------------------------
def _median_raster_pixel(plane: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(plane)
    if len(rows) == 0:
        return None
    mid = len(rows) // 2
    return np.array([rows[mid], cols[mid]])


def _point_on_bound(mask_zyx: np.ndarray, axis: int, coord: int, search_forward: bool = False) -> np.ndarray:
    """The reference's point for one wall: the median raster pixel of the mask's slice at ``coord`` on ``axis``.

    Slices are laid out as the reference does: axis 0 -> [y, x], axis 1 -> [x, z], axis 2 -> [z, y]. With
    ``search_forward`` an empty slice is replaced by the next non-empty one (bounded), keeping ``coord``.
    """
    n = mask_zyx.shape[axis]
    probe = coord
    while True:
        if axis == 0:
            plane = mask_zyx[probe]
        elif axis == 1:
            plane = mask_zyx[:, probe, :].T
        else:
            plane = mask_zyx[:, :, probe]
        pixel = _median_raster_pixel(plane)
        if pixel is not None or not search_forward:
            break
        probe = probe + 1 if probe + 1 < n else None
        if probe is None:  # nothing further on: look backwards instead (the reference would crash here)
            for back in range(coord - 1, -1, -1):
                return _point_on_bound(mask_zyx, axis, back)
            raise TemplateError("empty mask")
    if pixel is None:
        raise TemplateError(f"mask slice {coord} on axis {axis} is empty")
    if axis == 0:
        return np.array([coord, pixel[0], pixel[1]])
    if axis == 1:
        return np.array([pixel[1], coord, pixel[0]])
    return np.array([pixel[0], pixel[1], coord])


def extreme_points_zyx(mask_zyx: np.ndarray, bounds: np.ndarray | None = None, whole_mask: np.ndarray | None = None
                       ) -> np.ndarray:
    """(6,3) points in the reference order [zmin, ymin, xmin, zmax, ymax, xmax] of a LAS-ordered (z,y,x) mask.

    ``bounds`` (2,3) overrides the bounds (SPL slabs), and the points are then taken from ``whole_mask``.
    """
    mask = np.asarray(mask_zyx, bool)
    if not mask.any():
        raise TemplateError("the structure's mask is empty")
    if bounds is None:
        nz = [np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
        bounds = np.array([[v[0] for v in nz], [v[-1] for v in nz]])
    source = mask if whole_mask is None else np.asarray(whole_mask, bool)
    return np.array([_point_on_bound(source, a, int(bounds[b][a]), search_forward=whole_mask is not None)
                     for b in (0, 1) for a in range(3)], float)


def split_count(z_extent_mm: float, slice_interval: int = 2, work_spacing_mm: float = 3.0) -> int:
    """SPL slab count: min(Lz // interval, 6) when the extent Lz (in 3 mm voxels) exceeds the interval, else 1."""
    lz = int(z_extent_mm // work_spacing_mm)
    if slice_interval < 1:
        raise ValueError(f"slice_interval must be >= 1; got {slice_interval}")
    return min(lz // slice_interval, MAX_SLABS) if lz > slice_interval else 1


def slab_points_zyx(mask_zyx: np.ndarray, split_num: int) -> list[np.ndarray]:
    """SPL: cut the mask's z-range into ``split_num`` slabs; 6 reference-ordered points per slab.

    Fixes the reference: an empty slab takes the whole-structure y/x bounds instead of crashing or silently reusing
    the previous slab, and the empty-slice walk is bounded.
    """
    mask = np.asarray(mask_zyx, bool)
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    zmin, zmax = int(zs[0]), int(zs[-1])
    split_num = max(1, min(int(split_num), zmax - zmin + 1))
    step = max(1, (zmax - zmin) // split_num)
    out = []
    whole_y = np.nonzero(mask.any(axis=(0, 2)))[0]
    whole_x = np.nonzero(mask.any(axis=(0, 1)))[0]
    for i in range(split_num):
        start = zmin + i * step
        end = zmax if i == split_num - 1 else start + step
        part = mask[start:end + 1]
        ys = np.nonzero(part.any(axis=(0, 2)))[0]
        xs = np.nonzero(part.any(axis=(0, 1)))[0]
        if len(ys) == 0:
            ys, xs = whole_y, whole_x
        bounds = np.array([[start, ys[0], xs[0]], [end, ys[-1], xs[-1]]])
        out.append(extreme_points_zyx(mask, bounds=bounds, whole_mask=mask))
    return out


def _view_points_to_lps(points_zyx: np.ndarray, labels: Volume) -> np.ndarray:
    kji = kji_from_las_view(points_zyx, labels.shape_kji, labels.direction)
    return labels.lps_from_ijk(kji[:, ::-1])


def structure_points_from_mask(labels: Volume, mask_kji: np.ndarray) -> np.ndarray:
    """(6,3) LPS extreme points (POINT_NAMES order) of a boolean mask on the labels' grid."""
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    ref = extreme_points_zyx(view)
    return _view_points_to_lps(ref, labels)[REF_TO_LPS]


def slab_points_from_mask(labels: Volume, mask_kji: np.ndarray, split_num: int) -> list[np.ndarray]:
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    return [_view_points_to_lps(ref, labels)[REF_TO_LPS] for ref in slab_points_zyx(view, split_num)]


def z_extent_mm(labels: Volume, mask_kji: np.ndarray) -> float:
    """Superior-inferior extent of a mask between its extreme voxel centres, in mm (on the LAS view)."""
    axes, _ = las_axis_map(labels.direction)
    view = to_las_view(np.asarray(mask_kji, bool), labels.direction)
    zs = np.nonzero(view.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return 0.0
    spacing_z = labels.spacing_mm[2 - axes[0]]  # array axis a is index axis 2 - a
    return float((zs[-1] - zs[0]) * spacing_z)


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
            raise TemplateError(f"template {self.name!r} structure {structure!r}: point(s) "
                                f"{np.round(extreme[~inside], 1).tolist()} (LPS mm) lie outside the template volume")
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
            raise TemplateError("no structures requested")
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
            raise TemplateError(f"{path} is not valid YAML/JSON: {error}") from None
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


def template_from_phantom(name: str, phantom, structures: list[str] | None = None) -> Template:
    """Convenience for tests/demos: a labelled phantom as a template (labels kept for SPL)."""
    ids = phantom.label_ids if structures is None else {s: phantom.label_ids[s] for s in structures}
    return Template.from_volumes(name, phantom.image, phantom.labels, ids)
