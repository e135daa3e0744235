"""Undoable, non-destructive writes of AI results into a segmentation node.

Rules every AI edit follows:
- it writes only into one segment: a new one by default, or the one the user chose;
- voxels that belong to any other segment are never taken (they are removed from the AI mask, and counted);
- each action pushes one record of the voxels it changed, so ``undo`` restores those voxels and the segment's tags,
  or removes the segment if the action created it and the user added nothing since; voxels the user changed after
  the action keep the user's values;
- the prompts that produced the result are stored as segment tags, so the action can be inspected, edited and re-run.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from MedFoundationSegLib.core import terminology

from . import mrml_bridge


@dataclasses.dataclass
class EditRecord:
    """What one AI edit changed, cropped to the changed voxels' bounding box and bit-packed (zlib): ``changed`` marks
    the voxels the edit flipped inside ``crop``; at those voxels the edit wrote ``not previous``."""

    segmentation_node_id: str
    segment_id: str
    created: bool
    crop: tuple[slice, slice, slice] | None  # None: the edit changed no voxel
    changed_packed: bytes
    written_packed: bytes  # the values the edit wrote at the changed voxels, in ``np.flatnonzero(changed)`` order
    previous_prompts: dict | None
    volume_node_id: str
    action: str

    @property
    def nbytes(self) -> int:
        return len(self.changed_packed) + len(self.written_packed)


def _pack(bits: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(np.asarray(bits, bool).ravel()).tobytes(), 1)


def _unpack(data: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(zlib.decompress(data), np.uint8), count=count).astype(bool)


def _crop_of(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    if not mask.any():
        return None
    ranges = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return tuple(slice(int(r[0]), int(r[-1]) + 1) for r in ranges)


@dataclasses.dataclass
class EditResult:
    segment_id: str
    voxels_written: int
    voxels_protected: int  # AI voxels dropped because another segment owns them


class SegmentEditHistory:
    """Applies AI masks to segments and undoes them, one step per action.

    Undo restores only the voxels that still hold what the edit wrote: anything the user changed afterwards (paint,
    erase) stays as the user left it."""

    def __init__(self, scene, max_steps: int = 20):
        self.scene = scene
        self.max_steps = max_steps
        self._records: list[EditRecord] = []

    def __len__(self) -> int:
        return len(self._records)

    def nbytes(self) -> int:
        """Memory the undo history holds."""
        return sum(record.nbytes for record in self._records)

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
            previous, previous_prompts = np.zeros(volume_shape, bool), None
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
        self._records.append(self._record(segmentation_node, segment_id, created, previous, kept, previous_prompts,
                                          volume_node, action))
        del self._records[:-self.max_steps]
        return EditResult(segment_id, int(kept.sum()), int((mask_kji & protected).sum()))

    @staticmethod
    def _record(segmentation_node, segment_id, created, previous, written, previous_prompts, volume_node,
                action) -> EditRecord:
        changed = previous != written
        crop = _crop_of(changed)
        changed_crop = changed[crop] if crop else np.zeros(0, bool)
        written_values = written[crop][changed_crop] if crop else np.zeros(0, bool)
        return EditRecord(segmentation_node.GetID(), segment_id, created, crop, _pack(changed_crop),
                          _pack(written_values), previous_prompts, volume_node.GetID(), action)

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
        current = mrml_bridge.segment_mask_kji(segmentation_node, record.segment_id, volume_node)
        if record.crop is not None:
            region = current[record.crop]
            changed = _unpack(record.changed_packed, region.size).reshape(region.shape)
            written = _unpack(record.written_packed, int(changed.sum()))
            ours = region[changed] == written  # voxels nobody touched since the edit
            values = region[changed]
            values[ours] = ~written[ours]
            region[changed] = values
            current[record.crop] = region
        if record.created and not current.any():
            segmentation.RemoveSegment(record.segment_id)
            return record.action
        mrml_bridge.write_segment_mask_kji(segmentation_node, record.segment_id, current, volume_node)
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
