"""Standard terminology (SNOMED-CT codes) for structures and segments, in Slicer's own "TerminologyEntry" tag format.

Why: a segment called "liver" means nothing to DICOM SEG export or to another site's pipeline; the coded entry does.
Slicer stores it as one segment tag, ``TerminologyEntry`` (``vtkSegment.GetTerminologyEntryTagName()``), whose value
is seven '~'-separated fields:

    context name ~ category ~ type ~ type modifier ~ anatomic context name ~ anatomic region ~ region modifier

where each coded field is ``scheme^value^meaning`` (``^^`` when empty). The tag travels inside .seg.nrrd files.
The organ -> code map is data (terminology.yaml). Pure Python: no Slicer import, except in the two segment helpers.
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from pathlib import Path

import yaml

TAG_NAME = "TerminologyEntry"  # = vtkSegment.GetTerminologyEntryTagName()
MAP_PATH = Path(__file__).with_name("terminology.yaml")
LATERALITY_WORDS = ("right", "left")


class TerminologyError(ValueError):
    """A terminology tag or map entry is malformed; the message says which field."""


@dataclasses.dataclass(frozen=True)
class Code:
    scheme: str  # coding scheme designator, e.g. "SCT" (SNOMED-CT)
    value: str  # e.g. "10200004"
    meaning: str  # e.g. "Liver"

    def to_field(self) -> str:
        for part in (self.scheme, self.value, self.meaning):
            if "^" in part or "~" in part:
                raise TerminologyError(f"terminology code part {part!r} contains a separator ('^' or '~')")
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @classmethod
    def from_field(cls, text: str) -> Code | None:
        """'SCT^10200004^Liver' -> Code; '^^' or '' -> None."""
        parts = text.split("^")
        if len(parts) != 3:
            raise TerminologyError(f"terminology code {text!r} is not 'scheme^value^meaning'")
        return None if not any(parts) else cls(*parts)


def _field(code: Code | None) -> str:
    return code.to_field() if code is not None else "^^"


@dataclasses.dataclass(frozen=True)
class TerminologyEntry:
    context: str
    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_context: str = ""
    region: Code | None = None
    region_modifier: Code | None = None

    def to_tag(self) -> str:
        """The segment tag value, field for field as Slicer's vtkSlicerTerminologiesModuleLogic serializes it."""
        return "~".join([self.context, _field(self.category), _field(self.type), _field(self.type_modifier),
                         self.anatomic_context, _field(self.region), _field(self.region_modifier)])

    @classmethod
    def from_tag(cls, text: str) -> TerminologyEntry:
        fields = str(text).split("~")
        if len(fields) != 7:
            raise TerminologyError(f"a TerminologyEntry tag has 7 '~'-separated fields, this one has {len(fields)}: "
                                   f"{text!r}")
        category, type_ = Code.from_field(fields[1]), Code.from_field(fields[2])
        if category is None or type_ is None:
            raise TerminologyError(f"the TerminologyEntry tag {text!r} has no category or no type")
        return cls(fields[0], category, type_, Code.from_field(fields[3]), fields[4], Code.from_field(fields[5]),
                   Code.from_field(fields[6]))

    @property
    def display_name(self) -> str:
        """'Kidney, Right' style label (what Slicer's terminology selector shows)."""
        return self.type.meaning + (f", {self.type_modifier.meaning}" if self.type_modifier else "")


@dataclasses.dataclass(frozen=True)
class MapEntry:
    key: str
    entry: TerminologyEntry  # without laterality
    color_rgb: tuple[float, float, float] | None
    lateral: bool


def normalize_name(name: str) -> list[str]:
    """'Kidney_Right' -> ['kidney', 'right']: lower case words, '_' '-' ',' and spaces as separators."""
    return [word for word in re.split(r"[\s_\-,]+", str(name).strip().lower()) if word]


def _code(spec, where: str, scheme: str | None = None) -> Code:
    if not isinstance(spec, dict) or "value" not in spec or "meaning" not in spec:
        raise TerminologyError(f"{where}: expected a mapping with 'value' and 'meaning'")
    return Code(str(spec.get("scheme", scheme or "")), str(spec["value"]), str(spec["meaning"]))


def parse_map(data: dict, source: str = "terminology map") -> dict:
    """The YAML map -> {'entries': {normalized name: MapEntry}, 'laterality': {'right': Code, 'left': Code}}."""
    for key in ("context", "category", "structures"):
        if key not in (data or {}):
            raise TerminologyError(f"{source}: missing '{key}'")
    category = _code(data["category"], f"{source}: category")
    laterality = {side: _code(spec, f"{source}: laterality {side}")
                  for side, spec in (data.get("laterality") or {}).items()}
    entries = {}
    for key, spec in data["structures"].items():
        where = f"{source}: structure {key!r}"
        entry = TerminologyEntry(str(data["context"]), category, _code(spec, where, category.scheme),
                                 anatomic_context=str(data.get("anatomic_context", "")))
        color = spec.get("color_rgb255")
        if color is not None and (len(color) != 3 or not all(0 <= c <= 255 for c in color)):
            raise TerminologyError(f"{where}: color_rgb255 must be 3 values in 0..255")
        lateral = bool(spec.get("lateral", False))
        if lateral and not {"right", "left"} <= set(laterality):
            raise TerminologyError(f"{where}: lateral, but the map has no right/left laterality codes")
        item = MapEntry(str(key), entry, tuple(c / 255.0 for c in color) if color else None, lateral)
        for name in [key, *spec.get("synonyms", [])]:
            normalized = " ".join(normalize_name(name))
            if normalized in entries:
                raise TerminologyError(f"{where}: name {name!r} is already used by {entries[normalized].key!r}")
            entries[normalized] = item
    return {"entries": entries, "laterality": laterality}


@lru_cache(maxsize=4)
def load_map(path: str | Path = MAP_PATH) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TerminologyError(f"terminology map not found: {path}")
    return parse_map(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


@dataclasses.dataclass(frozen=True)
class Match:
    entry: TerminologyEntry
    color_rgb: tuple[float, float, float] | None


def match_structure(name: str, table: dict | None = None) -> Match | None:
    """The coded entry for a structure name ('liver', 'kidney_right', 'Left adrenal'), or None when the map has no
    entry for it (then no tag is written: a wrong code is worse than none)."""
    table = table if table is not None else load_map()
    words = normalize_name(name)
    sides = [word for word in words if word in LATERALITY_WORDS]
    base = " ".join(word for word in words if word not in LATERALITY_WORDS)
    item = table["entries"].get(base)
    if item is None or len(set(sides)) > 1:
        return None
    if sides and not item.lateral:
        return None  # "left liver" is not a liver: leave it uncoded
    entry = item.entry
    if sides:
        entry = dataclasses.replace(entry, type_modifier=table["laterality"][sides[0]])
    return Match(entry, item.color_rgb)


def tag_for_structure(name: str) -> str | None:
    match = match_structure(name)
    return match.entry.to_tag() if match else None


def choices(table: dict | None = None) -> list[tuple[str, str]]:
    """(label, tag) for every coded structure (with Right/Left variants), sorted by label: the UI's picker."""
    table = table if table is not None else load_map()
    seen, rows = set(), []
    for item in table["entries"].values():
        if item.key in seen:
            continue
        seen.add(item.key)
        variants = [item.entry]
        if item.lateral:
            variants = [dataclasses.replace(item.entry, type_modifier=table["laterality"][side])
                        for side in LATERALITY_WORDS]
        rows += [(entry.display_name, entry.to_tag()) for entry in variants]
    return sorted(rows)


# --- segment tags (need MRML) ---------------------------------------------------------------------------------------
def set_segment_terminology(segment, tag: str | None) -> None:
    """Write (or with None, remove) a segment's TerminologyEntry tag; the value is validated first."""
    if tag is None:
        segment.RemoveTag(TAG_NAME)
        return
    TerminologyEntry.from_tag(tag)
    segment.SetTag(TAG_NAME, tag)


def get_segment_terminology(segment) -> str | None:
    import vtk

    if segment is None or not segment.HasTag(TAG_NAME):
        return None
    value = vtk.reference("")
    segment.GetTag(TAG_NAME, value)
    return str(value) or None
