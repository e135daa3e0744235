"""MRML <-> engine conversions: the one place where Slicer's RAS and (k,j,i) arrays meet the engine's LPS Volume.

Uses only MRML, vtk, numpy and slicer.util array helpers, so it runs in the Slicer application and under
``slicer-core`` (tests). Every function takes explicit nodes; nothing reads GUI state.
"""

from __future__ import annotations

import json

import numpy as np
import slicer
import slicer.util
import vtk
from MedFoundationSegLib.core.geometry import (  # noqa: F401 (used by Logic)
    ijk_box_from_ras_bounds,
    lps_from_ras,
    ras_bounds_from_ijk_box,
    ras_from_lps,
)
from MedFoundationSegLib.core.volume import Volume

from .node_attributes import PROMPTS_TAG  # one JSON object per segment (vtkSegment cannot list its tag keys)


def _matrix_from_vtk(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_of(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _matrix_from_vtk(matrix)


def volume_from_node(volume_node, *, copy: bool = True) -> Volume:
    """A scalar volume node as an engine Volume (array (k,j,i), LPS geometry). Parent transforms are not applied.

    Its ``key`` (node ID + the image data's modification time) tells the engine that two copies hold the same voxels,
    so slice embeddings are reused across actions until the voxels change."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("no volume selected, or the volume has no image data")
    array_kji = slicer.util.arrayFromVolume(volume_node)
    if array_kji.ndim != 3:
        raise ValueError(f"{volume_node.GetName()} is not a scalar 3D volume (array shape {array_kji.shape})")
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras_of(volume_node)
    spacing_mm = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    return Volume(
        array=np.array(array_kji) if copy else array_kji,
        spacing_mm=tuple(spacing_mm),
        origin_lps_mm=tuple(ijk_to_lps[:3, 3]),
        direction=ijk_to_lps[:3, :3] / spacing_mm,
        name=volume_node.GetName(),
        key=volume_key(volume_node),
    )


def volume_key(volume_node) -> str:
    return f"{volume_node.GetID()}@{volume_node.GetImageData().GetMTime()}"


def control_points_ras(markups_node) -> np.ndarray:
    """(N, 3) world RAS positions of a markups node's control points (transforms applied)."""
    if markups_node is None:
        return np.zeros((0, 3))
    return np.asarray(slicer.util.arrayFromMarkupsControlPoints(markups_node, world=True), float).reshape(-1, 3)


def set_control_points_ras(markups_node, points_ras: np.ndarray, labels: list[str] | None = None) -> None:
    markups_node.RemoveAllControlPoints()
    for index, point in enumerate(np.atleast_2d(points_ras)):
        markups_node.AddControlPoint(vtk.vtkVector3d(*map(float, point)), labels[index] if labels else "")


def roi_bounds_ras(roi_node) -> np.ndarray:
    """(2, 3) axis-aligned RAS bounds of an ROI (its world bounding box, so rotated ROIs are covered)."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return np.array([bounds[0::2], bounds[1::2]])


def set_roi_bounds_ras(roi_node, bounds_ras: np.ndarray) -> None:
    lo, hi = np.asarray(bounds_ras, float)
    roi_node.SetCenterWorld(*((lo + hi) / 2))
    roi_node.SetSizeWorld(*(hi - lo))


def new_node(scene, class_name: str, name: str):
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    return node


# --- segments ----------------------------------------------------------------------------------------------------
def segment_mask_kji(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment as a bool (k, j, i) array on ``volume_node``'s grid (all False for an empty segment)."""
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    if array is None:
        return np.zeros(slicer.util.arrayFromVolume(volume_node).shape, bool)
    return np.asarray(array) > 0


def other_segments_mask_kji(segmentation_node, segment_id: str, volume_node, ignore=()) -> np.ndarray:
    """Union of every segment except ``segment_id`` (and ``ignore``): the voxels an AI edit must never take."""
    segmentation = segmentation_node.GetSegmentation()
    union = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, bool)
    for index in range(segmentation.GetNumberOfSegments()):
        other = segmentation.GetNthSegmentID(index)
        if other != segment_id and other not in ignore:
            union |= segment_mask_kji(segmentation_node, other, volume_node)
    return union


def write_segment_mask_kji(segmentation_node, segment_id: str, mask_kji: np.ndarray, volume_node) -> None:
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.asarray(mask_kji, np.uint8), segmentation_node, segment_id,
                                                     volume_node)




def get_segment_prompts(segmentation_node, segment_id: str) -> dict:
    """The prompts (model, boxes, points, clicks, action) that produced a segment, or {} for a user segment."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None or not segment.HasTag(PROMPTS_TAG):
        return {}
    text = vtk.reference("")
    segment.GetTag(PROMPTS_TAG, text)
    return json.loads(str(text)) if str(text) else {}


def set_segment_prompts(segmentation_node, segment_id: str, prompts: dict | None) -> None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if prompts is None:
        segment.RemoveTag(PROMPTS_TAG)
    else:
        segment.SetTag(PROMPTS_TAG, json.dumps(prompts))
