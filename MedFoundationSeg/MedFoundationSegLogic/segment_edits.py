"""Undoable, non-destructive writes of AI results into a segmentation node.

Rules every AI edit follows:
- it writes only into one segment: a new one by default, or the one the user chose;
- voxels that belong to any other segment are never taken (they are removed from the AI mask, and counted);
- each action pushes one snapshot, so ``undo`` restores the segment's previous voxels and tags exactly, or removes the
  segment if the action created it;
- the prompts that produced the result are stored as segment tags, so the action can be inspected, edited and re-run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib import terminology

from . import mrml_bridge


@dataclasses.dataclass
class EditRecord:
    segmentation_node_id: str
    segment_id: str
    created: bool
    previous_mask_kji: np.ndarray | None
    previous_prompts: dict | None
    volume_node_id: str
    action: str


@dataclasses.dataclass
class EditResult:
    segment_id: str
    voxels_written: int
    voxels_protected: int  # AI voxels dropped because another segment owns them


class SegmentEditHistory:
    """Applies AI masks to segments and undoes them, one step per action."""

    def __init__(self, scene, max_steps: int = 20):
        self.scene = scene
        self.max_steps = max_steps
        self._records: list[EditRecord] = []

    def __len__(self) -> int:
        return len(self._records)

    def last_action(self) -> str | None:
        return self._records[-1].action if self._records else None

    def apply(self, volume_node, segmentation_node, mask_kji: np.ndarray, *, segment_id: str | None = None,
              segment_name: str = "AI segment", color_rgb=(0.9, 0.6, 0.2), prompts: dict | None = None,
              action: str = "segment", scratch_segment_ids=(), terminology_tag: str | None = None) -> EditResult:
        """``scratch_segment_ids``: helper segments (e.g. the user's include scribbles) whose voxels the result may
        share; every other segment stays protected. ``terminology_tag``: Slicer TerminologyEntry of a segment this
        action creates (an existing segment keeps the terminology the user gave it)."""
        mask_kji = np.asarray(mask_kji, bool)
        volume_shape = mrml_bridge.slicer.util.arrayFromVolume(volume_node).shape
        if mask_kji.shape != volume_shape:
            raise ValueError(f"mask shape {mask_kji.shape} does not match the volume's (k,j,i) shape {volume_shape}")
        if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0 or \
                not segmentation_node.GetNodeReference("referenceImageGeometryRef"):
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation = segmentation_node.GetSegmentation()
        created = segment_id is None
        if created:
            if terminology_tag is not None:
                terminology.TerminologyEntry.from_tag(terminology_tag)  # refuse a malformed tag before any change
            segment_id = segmentation.AddEmptySegment("", _unique_name(segmentation, segment_name), list(color_rgb))
            if terminology_tag is not None:
                terminology.set_segment_terminology(segmentation.GetSegment(segment_id), terminology_tag)
            previous, previous_prompts = None, None
        else:
            if segmentation.GetSegment(segment_id) is None:
                raise ValueError(f"segment {segment_id!r} does not exist in {segmentation_node.GetName()}")
            previous = mrml_bridge.segment_mask_kji(segmentation_node, segment_id, volume_node)
            previous_prompts = mrml_bridge.get_segment_prompts(segmentation_node, segment_id) or None
        protected = mrml_bridge.other_segments_mask_kji(segmentation_node, segment_id, volume_node,
                                                        ignore=tuple(scratch_segment_ids))
        kept = mask_kji & ~protected
        mrml_bridge.write_segment_mask_kji(segmentation_node, segment_id, kept, volume_node)
        mrml_bridge.set_segment_prompts(segmentation_node, segment_id, dict(prompts or {}, action=action))
        self._records.append(EditRecord(segmentation_node.GetID(), segment_id, created, previous, previous_prompts,
                                        volume_node.GetID(), action))
        del self._records[:-self.max_steps]
        return EditResult(segment_id, int(kept.sum()), int((mask_kji & protected).sum()))

    def undo(self) -> str | None:
        """Revert the last action; returns its name, or None when there is nothing to undo."""
        if not self._records:
            return None
        record = self._records.pop()
        segmentation_node = self.scene.GetNodeByID(record.segmentation_node_id)
        volume_node = self.scene.GetNodeByID(record.volume_node_id)
        if segmentation_node is None or volume_node is None:
            return None  # the nodes were deleted by the user; nothing left to restore
        segmentation = segmentation_node.GetSegmentation()
        if segmentation.GetSegment(record.segment_id) is None:
            return None
        if record.created:
            segmentation.RemoveSegment(record.segment_id)
            return record.action
        mrml_bridge.write_segment_mask_kji(segmentation_node, record.segment_id, record.previous_mask_kji,
                                           volume_node)
        mrml_bridge.set_segment_prompts(segmentation_node, record.segment_id, record.previous_prompts)
        return record.action


def _unique_name(segmentation, base: str) -> str:
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    if base not in names:
        return base
    index = 2
    while f"{base} {index}" in names:
        index += 1
    return f"{base} {index}"
