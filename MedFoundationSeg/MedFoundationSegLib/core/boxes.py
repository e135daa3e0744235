"""The result both localizers return: a structure's 6 extreme points, its box on the original grid, SPL slabs.

Extreme points are physical LPS millimetres ordered ``[x-min, x-max, y-min, y-max, z-min, z-max]`` along the LPS axes
(x-min = right-most, y-min = anterior-most, z-min = inferior-most). Boxes are inclusive voxel index ranges of the
original grid, in (i, j, k) order, plus the same box as LPS millimetres (voxel centres of the extreme voxels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core.volume import LPS_TO_RAS, Volume

POINT_NAMES = ("x-min", "x-max", "y-min", "y-max", "z-min", "z-max")
# Reference (MedLAM) order in LAS (z,y,x) working space is [zmin, ymin, xmin, zmax, ymax, xmax]; LAS y runs anterior,
# i.e. against LPS y. ref[j] = lps[LPS_TO_REF[j]] and lps[i] = ref[REF_TO_LPS[i]].
LPS_TO_REF = np.array([4, 3, 0, 5, 2, 1])
REF_TO_LPS = np.array([2, 5, 4, 1, 0, 3])


def lps_box_from_extreme_points(points_lps: np.ndarray) -> np.ndarray:
    """(6,3) extreme points -> (2,3) [[min x,y,z],[max x,y,z]] (each wall from its own point; swapped if crossed)."""
    p = np.asarray(points_lps, float).reshape(6, 3)
    lo = np.array([p[0, 0], p[2, 1], p[4, 2]])
    hi = np.array([p[1, 0], p[3, 1], p[5, 2]])
    return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)])


def extreme_points_from_cloud(points_lps: np.ndarray) -> np.ndarray:
    """Any (N>=1, 3) point set -> its (6,3) extreme points along the LPS axes (order-free input)."""
    cloud = np.atleast_2d(np.asarray(points_lps, float))
    if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) == 0:
        raise ValueError(f"need an (N, 3) array of points; got shape {np.shape(points_lps)}")
    picks = [cloud[np.argmin(cloud[:, a])] if bound == 0 else cloud[np.argmax(cloud[:, a])]
             for a in range(3) for bound in (0, 1)]
    return np.stack(picks)


def ijk_box_from_lps_box(volume_ijk_to_lps: np.ndarray, shape_kji, box_lps: np.ndarray,
                         clip: bool = True) -> np.ndarray:
    """Inclusive (2,3) (i,j,k) box of the original grid covering an LPS box (exact for flips/permutations)."""
    lo, hi = np.asarray(box_lps, float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    inv = np.linalg.inv(volume_ijk_to_lps)
    ijk = corners @ inv[:3, :3].T + inv[:3, 3]
    box = np.stack([np.round(ijk.min(0) + 1e-6), np.round(ijk.max(0) - 1e-6)]).astype(int)
    if clip:
        upper = np.array(shape_kji[::-1]) - 1
        box = np.clip(box, 0, upper)
    return box


@dataclasses.dataclass
class Slab:
    """One SPL sub-box (a z-slab of the structure)."""

    extreme_points_lps: np.ndarray
    box_ijk: np.ndarray | None
    box_lps_mm: np.ndarray

    def to_dict(self) -> dict:
        return {"extreme_points_lps": np.round(self.extreme_points_lps, 4).tolist(),
                "box_ijk": None if self.box_ijk is None else self.box_ijk.tolist(),
                "box_lps_mm": np.round(self.box_lps_mm, 4).tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Slab":
        return cls(np.asarray(data["extreme_points_lps"], float),
                   None if data.get("box_ijk") is None else np.asarray(data["box_ijk"], int),
                   np.asarray(data["box_lps_mm"], float))


@dataclasses.dataclass
class StructureBox:
    name: str
    extreme_points_lps: np.ndarray  # (6,3), POINT_NAMES order
    box_ijk: np.ndarray | None  # (2,3) inclusive [[i0,j0,k0],[i1,j1,k1]]; None when absent
    box_lps_mm: np.ndarray | None  # (2,3) [[xmin,ymin,zmin],[xmax,ymax,zmax]] LPS mm; None when absent
    confidence: float
    present: bool
    engine: str
    slabs: list[Slab] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)
    fraction_inside: float = 1.0  # share of the box (by volume) inside the query's field of view

    @property
    def partial(self) -> bool:
        """Present but cut by the field of view: segmented inside it only."""
        return bool(self.present) and self.fraction_inside < 1.0

    @property
    def extreme_points_ras(self) -> np.ndarray:
        return np.asarray(self.extreme_points_lps, float) @ LPS_TO_RAS

    @property
    def box_ras_mm(self) -> np.ndarray | None:
        if self.box_lps_mm is None:
            return None
        ras = np.asarray(self.box_lps_mm) @ LPS_TO_RAS
        return np.stack([ras.min(0), ras.max(0)])

    def slices_kji(self) -> tuple[slice, slice, slice]:
        """Index a (z,y,x) array with the box."""
        if self.box_ijk is None:
            raise ValueError(f"structure {self.name!r} is absent; it has no box")
        (i0, j0, k0), (i1, j1, k1) = self.box_ijk
        return slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "engine": self.engine, "present": bool(self.present),
            "partial": self.partial, "fraction_inside": round(float(self.fraction_inside), 4),
            "confidence": float(self.confidence),
            "point_names": list(POINT_NAMES),
            "extreme_points_lps": np.round(self.extreme_points_lps, 4).tolist(),
            "extreme_points_ras": np.round(self.extreme_points_ras, 4).tolist(),
            "box_ijk": None if self.box_ijk is None else np.asarray(self.box_ijk).tolist(),
            "box_lps_mm": None if self.box_lps_mm is None else np.round(self.box_lps_mm, 4).tolist(),
            "box_ras_mm": None if self.box_lps_mm is None else np.round(self.box_ras_mm, 4).tolist(),
            "slabs": [s.to_dict() for s in self.slabs],
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "StructureBox":
        if "extreme_points_lps" in data:
            points = np.asarray(data["extreme_points_lps"], float)
        else:
            points = np.asarray(data["extreme_points_ras"], float) @ LPS_TO_RAS
        return cls(
            name=data["name"], extreme_points_lps=points,
            box_ijk=None if data.get("box_ijk") is None else np.asarray(data["box_ijk"], int),
            box_lps_mm=None if data.get("box_lps_mm") is None else np.asarray(data["box_lps_mm"], float),
            confidence=float(data.get("confidence", 0.0)), present=bool(data.get("present", True)),
            engine=data.get("engine", ""), slabs=[Slab.from_dict(s) for s in data.get("slabs", [])],
            details=dict(data.get("details", {})), fraction_inside=float(data.get("fraction_inside", 1.0)))


def points_inside(volume_ijk_to_lps: np.ndarray, shape_kji, points_lps: np.ndarray,
                  margin_voxels: float = 0.5) -> np.ndarray:
    """Per point: does it lie within the voxel grid (centres +- ``margin_voxels``)?"""
    inv = np.linalg.inv(volume_ijk_to_lps)
    ijk = np.atleast_2d(points_lps) @ inv[:3, :3].T + inv[:3, 3]
    upper = np.array(shape_kji[::-1], float) - 1 + margin_voxels
    return np.all((ijk >= -margin_voxels) & (ijk <= upper), axis=1)


def fraction_of_box_inside(volume_ijk_to_lps: np.ndarray, shape_kji, box_lps: np.ndarray) -> float:
    """Share of an LPS box's voxels (on the query grid, so by volume) that lie inside the field of view."""
    whole = ijk_box_from_lps_box(volume_ijk_to_lps, shape_kji, box_lps, clip=False)
    clipped = np.clip(whole, 0, np.array(shape_kji[::-1]) - 1)
    whole_voxels = np.prod(np.maximum(whole[1] - whole[0] + 1, 1))
    inside = np.maximum(np.minimum(whole[1], clipped[1]) - np.maximum(whole[0], clipped[0]) + 1, 0)
    return float(np.prod(inside) / whole_voxels)


def make_structure_box(name: str, points_lps: np.ndarray, query: Volume, engine: str, confidence: float,
                       slab_points_lps: list[np.ndarray] | None = None, margin_voxels: float = 0.5,
                       details: dict | None = None) -> StructureBox:
    """Assemble the common result. A box cut by the field of view is kept as *partial* (clipped to the volume, with
    the fraction inside); one wholly outside is absent (no box)."""
    points_lps = np.asarray(points_lps, float).reshape(6, 3)
    inside = points_inside(query.ijk_to_lps, query.shape_kji, points_lps, margin_voxels)
    box_lps = lps_box_from_extreme_points(points_lps)
    fraction = 1.0 if inside.all() else fraction_of_box_inside(query.ijk_to_lps, query.shape_kji, box_lps)
    present = fraction > 0.0
    details = dict(details or {})
    details["points_inside"] = inside.tolist()
    slabs = []
    for slab_points in slab_points_lps or []:
        slab_box = lps_box_from_extreme_points(slab_points)
        slab_inside = fraction_of_box_inside(query.ijk_to_lps, query.shape_kji, slab_box) > 0
        slabs.append(Slab(np.asarray(slab_points, float),
                          ijk_box_from_lps_box(query.ijk_to_lps, query.shape_kji, slab_box)
                          if present and slab_inside else None, slab_box))
    if not present:
        details.setdefault("reason", "the structure lies outside the volume")
        return StructureBox(name, points_lps, None, None, float(confidence), False, engine, slabs, details,
                            fraction_inside=fraction)
    box_ijk = ijk_box_from_lps_box(query.ijk_to_lps, query.shape_kji, box_lps)
    if fraction < 1.0:  # the LPS box too is cut to what the volume holds
        corners_lps = query.lps_from_ijk(box_ijk.astype(float))
        box_lps = np.stack([corners_lps.min(0), corners_lps.max(0)])
    return StructureBox(name, points_lps, box_ijk, box_lps, float(confidence), True, engine, slabs, details,
                        fraction_inside=fraction)


def boxes_to_json(boxes: dict[str, StructureBox] | list[StructureBox], query: Volume | None = None,
                  extra: dict | None = None) -> dict:
    items = boxes.values() if isinstance(boxes, dict) else boxes
    out = {"format": "medlam-boxes", "version": 1, "structures": [b.to_dict() for b in items]}
    if query is not None:
        out["query"] = {"name": query.name, "shape_kji": list(query.shape_kji),
                        "ijk_to_lps": np.round(query.ijk_to_lps, 6).tolist()}
    out.update(extra or {})
    return out


def boxes_from_json(data: dict) -> dict[str, StructureBox]:
    return {item["name"]: StructureBox.from_dict(item) for item in data["structures"]}
