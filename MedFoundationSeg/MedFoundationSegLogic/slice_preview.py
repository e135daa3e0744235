"""A running job's finished slices, drawn while the job runs, in a scratch segmentation of their own.

Why a node of its own: the user's segmentation is written once, by ``SegmentEditHistory``, when the job ends (one undo
step); a preview drawn into it would be a second writer. The scratch node is hidden from node selectors and editors,
never saved with the scene, holds no segment another AI edit must protect, and is removed when the job ends, however
it ends.
"""

from __future__ import annotations

import time

import numpy as np
from MedFoundationSegLib.core import geometry

from . import mrml_bridge
from .node_attributes import PREVIEW_ATTRIBUTE

MIN_REDRAW_INTERVAL_S = 0.3  # a redraw writes the whole labelmap: at most about three a second ...
REDRAW_SHARE = 0.25  # ... and, on a large volume, at most this share of the GUI's time
PREVIEW_COLOR_RGB = (1.0, 0.9, 0.1)


class SlicePreviewDisplay:
    """Draws the slices of one job at a time; ``show`` from the GUI's poll timer, ``clear`` when the job ends."""

    def __init__(self, scene):
        self.scene = scene
        self._node_id: str | None = None
        self._job = None
        self._version = 0
        self._mask_kji: np.ndarray | None = None
        self._last_draw = self._last_fetch = 0.0
        self._shown: set[int] = set()
        self._interval_s = MIN_REDRAW_INTERVAL_S
        self._pending = False

    @property
    def node(self):
        """The preview node, if it is still in the scene (an ID reused after a scene close is not ours)."""
        node = self.scene.GetNodeByID(self._node_id) if self._node_id else None
        return node if node is not None and node.GetAttribute(PREVIEW_ATTRIBUTE) == "1" else None

    def show(self, job, volume_node, *, force: bool = False) -> int:
        """Fetch the slices ``job`` finished since the last fetch and redraw (at most every MIN_REDRAW_INTERVAL_S,
        slower on a volume whose redraw takes long, unless ``force``); returns how many slices the preview holds."""
        if job is not self._job:
            self.clear()
            self._job = job
        fetch = getattr(job, "preview_since", None)
        if fetch is None or volume_node is None:
            return 0
        if not force and time.monotonic() - self._last_fetch < self._interval_s:
            return self.slices()  # too soon to draw again: nothing fetched either
        self._last_fetch = time.monotonic()
        version, axis, indices, masks = fetch(self._version)
        if indices:
            if self._mask_kji is None:
                self._mask_kji = np.zeros(mrml_bridge.slicer.util.arrayFromVolume(volume_node).shape, bool)
            view = geometry.to_slices(self._mask_kji, axis)
            if masks is None or masks.shape[1:] != view.shape[1:] or max(indices) >= len(view):
                return self.slices()  # not this volume's slices (the engine answered for another request)
            view[indices] = masks
            self._shown.update(int(k) for k in indices)
            self._version, self._pending = version, True
        if self._pending:
            self._draw(volume_node)
        return self.slices()

    def slices(self) -> int:
        """How many slices the preview holds (finished slices, empty ones included)."""
        return len(self._shown)

    def _draw(self, volume_node) -> None:
        started = time.monotonic()
        node = self.node
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedFoundationSeg preview")
            node.SetAttribute(PREVIEW_ATTRIBUTE, "1")
            node.HideFromEditorsOn()
            node.SetSaveWithScene(False)
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            node.GetSegmentation().AddEmptySegment("preview", "preview", list(PREVIEW_COLOR_RGB))
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility2DFill(False)
                display.SetVisibility2DOutline(True)
                display.SetVisibility3D(False)
            self._node_id = node.GetID()
        mrml_bridge.write_segment_mask_kji(node, "preview", self._mask_kji, volume_node)
        self._last_draw, self._pending = time.monotonic(), False
        self._interval_s = max(MIN_REDRAW_INTERVAL_S, (self._last_draw - started) / REDRAW_SHARE)

    def clear(self) -> None:
        """Remove the preview node and forget the job."""
        node = self.node
        if node is not None:
            self.scene.RemoveNode(node)
        self._node_id, self._job, self._version, self._mask_kji, self._pending = None, None, 0, None, False
        self._shown, self._last_fetch = set(), 0.0
