"""MedFoundationSegLogic: what the MedFoundationSeg module does to a scene, without any Qt.

Every action has three steps, so the GUI never blocks:
- ``prepare_*`` (GUI thread) reads nodes into an engine request (a ``Volume``, boxes and clicks in ijk, options);
- ``start`` hands the request to the engine (by default a local engine process, see ``engine_process``) and
  returns a job the widget polls with a QTimer; ``PreparedAction.compute`` runs it to the end for scripts and tests;
- ``apply`` (GUI thread) writes the result into one segment through ``SegmentEditHistory`` (undoable, never
  touching other segments) and stores the prompts as a segment tag.
Nothing here imports torch: the engine does the computing in its own process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from MedFoundationSegLib.core import terminology
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.io.head_store import HeadStore, HeadStoreError, head_to_json, head_wire_arrays
from MedFoundationSegLib.workflow.actions import EngineRequest, EngineResult
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult

from . import mrml_bridge
from .node_attributes import ENGINE_ATTRIBUTE, STRUCTURE_ATTRIBUTE, TERMINOLOGY_ATTRIBUTE
from .segment_edits import EditResult, SegmentEditHistory
from .slice_preview import SlicePreviewDisplay


@dataclasses.dataclass
class PreparedAction:
    """Engine inputs of one action, read from the scene on the GUI thread."""

    action: str
    volume_node_id: str
    segmentation_node_id: str
    segment_id: str | None
    volume: Volume
    request: EngineRequest
    prompts: dict
    engine: object = dataclasses.field(repr=False, default=None)
    scratch_segment_ids: tuple = ()  # segments the result may overlap (the scribbles that guided it)
    terminology_tag: str | None = None  # Slicer TerminologyEntry for a segment the action creates (e.g. from MedLAM)
    structure: str | None = None  # the structure's name, under which its learned head is stored

    def compute(self, progress=None, cancelled=None) -> CaseResult:
        """Run the request on the engine to the end (scripts, tests); the widget uses ``start`` and polls instead."""
        return self.engine.run(self.request, progress, cancelled).case_result()

    def start(self):
        """Hand the request to the engine; returns a job with ``done``, ``fraction``, ``message``, ``result``,
        ``error`` and ``cancel()``."""
        return self.engine.submit(self.request, self.action)


class MedFoundationSegLogic:
    """The panel's actions on a scene. ``options`` holds the panel's choices (the widget writes them before each
    action). ``engine`` runs them: the shared local engine process by default (models and slice embeddings stay warm
    there across actions and modules), a remote one, or ``InProcessEngine`` for scripts.

    ``heads_folder``: where structure heads are kept (``<folder>/heads``, beside a template set): a segment-in-box or
    refine action on a named structure starts from its stored head, and applying the result stores the head the
    engine learned from it (segment/head_learning.py). None: nothing is stored."""

    def __init__(self, scene, options: Options | None = None, engine=None, heads_folder=None):
        self.scene = scene
        self.options = options or Options()
        self.history = SegmentEditHistory(scene)
        self._engine = engine
        self.head_store = None
        self._prior_heads = {}  # (volume node, structure, model) -> the stored head when work on that volume began
        self.head_warning = None  # why the last learned head was not stored
        self.set_heads_folder(heads_folder)
        self.preview = SlicePreviewDisplay(scene)

    @property
    def engine(self):
        if self._engine is None:
            from .engine_process import default_engine

            return default_engine()
        return self._engine

    def _prepared(self, action: str, volume_node, segmentation_node, segment_id, volume: Volume,
                  request: EngineRequest, prompts: dict, **extra) -> PreparedAction:
        return PreparedAction(action, volume_node.GetID(), segmentation_node.GetID(), segment_id, volume, request,
                              prompts, self.engine, **extra)

    # --- structure heads --------------------------------------------------------------------------------------------
    def set_heads_folder(self, folder) -> None:
        """Keep learned heads in ``folder``/heads (None: keep nothing). Another folder starts afresh."""
        current = None if self.head_store is None else self.head_store.folder.parent
        if (Path(folder) if folder else None) != current:
            self.head_store = HeadStore(folder) if folder else None
            self._prior_heads.clear()

    @staticmethod
    def _prior_key(volume_node_id: str, structure: str, model: str) -> tuple[str, str, str]:
        return (volume_node_id, structure, model)

    def _attach_prior_head(self, request: EngineRequest, volume_node, structure: str | None) -> None:
        """Send the structure's stored head with the request. The head read when work on this volume began stays the
        prior for every later action on it, so one volume counts once however many corrections it takes. Without a
        head to store, the engine is told not to build the head's shape."""
        stores = self.head_store is not None and bool(structure) and self.options.learn
        request.options = request.options.replace(head_shape=stores)
        if not stores:
            return
        key = self._prior_key(volume_node.GetID(), structure, self.options.model)
        if key not in self._prior_heads:
            self._prior_heads[key] = self.head_store.load(structure, self.options.model)
        if self._prior_heads[key] is not None:
            request.params["prior_head"] = head_to_json(self._prior_heads[key])
            request.arrays.update(head_wire_arrays(self._prior_heads[key], "prior_head"))

    def _store_head(self, prepared: PreparedAction, result: CaseResult) -> None:
        """Store the head the engine learned from this result. The engine counted its volumes from the prior sent
        with the request: one more, unless the prior had learned this volume already (opened and applied again in a
        later session)."""
        self.head_warning = None
        if self.head_store is None or not prepared.structure or result.head is None:
            return
        try:
            self.head_store.save(prepared.structure, prepared.request.options.model, result.head)
        except (OSError, HeadStoreError) as error:  # the segment is written all the same
            self.head_warning = f"the learned head of {prepared.structure} was not stored: {error}"

    # --- prepare (GUI thread) ---------------------------------------------------------------------------------------
    def _base(self, volume_node, segmentation_node):
        if volume_node is None:
            raise ValueError("select an input volume")
        if segmentation_node is None:
            raise ValueError("select or create a segmentation")
        # A view of the scene's voxels: the engine client sends them at once; an in-process engine copies them.
        return mrml_bridge.volume_from_node(volume_node, copy=False)

    def prepare_segment_in_roi(self, volume_node, roi_node, segmentation_node, segment_id=None) -> PreparedAction:
        if roi_node is None:
            raise ValueError("place or select a box (ROI) around the structure")
        structure = roi_node.GetAttribute(STRUCTURE_ATTRIBUTE) or _segment_name(segmentation_node, segment_id)
        return self._prepare_box(volume_node, mrml_bridge.roi_bounds_ras(roi_node), segmentation_node, segment_id,
                                 roi_node.GetID(), roi_node.GetAttribute(TERMINOLOGY_ATTRIBUTE),
                                 localized_by=roi_node.GetAttribute(ENGINE_ATTRIBUTE), structure=structure)

    def _prepare_box(self, volume_node, bounds_ras, segmentation_node, segment_id, roi_node_id, terminology_tag=None,
                     localized_by: str | None = None, structure: str | None = None) -> PreparedAction:
        """``localized_by``: the engine that placed the box (padded by ``options.padding_mm``); None for a box the
        user drew (padded by ``options.drawn_box_padding_mm``, 0 by default: taken as drawn, and its first and last
        slices taken as the structure's, ``Options.exact_range``)."""
        volume = self._base(volume_node, segmentation_node)
        bounds_ras = np.asarray(bounds_ras, float)
        box_ijk = mrml_bridge.ijk_box_from_ras_bounds(volume, bounds_ras)
        s = self.options
        if not localized_by:
            s = s.replace(padding_mm=s.drawn_box_padding_mm, padding_fraction=None, exact_range=True)
        request = EngineRequest("segment_box", volume, s, {"box_ijk": box_ijk.tolist()})
        self._attach_prior_head(request, volume_node, structure)
        prompts = {"model": s.model, "axis": s.axis, "box_ijk": box_ijk.tolist(),
                   "box_ras_mm": bounds_ras.round(3).tolist(), "roi_node": roi_node_id,
                   "localized_by": localized_by or None,  # None: a drawn box, used as drawn
                   "padding_mm": s.padding_mm, "mode": s.mode}
        return self._prepared("segment in box", volume_node, segmentation_node, segment_id, volume, request, prompts,
                              terminology_tag=terminology_tag, structure=structure)

    def prepare_propagation(self, volume_node, segmentation_node, segment_id: str, slice_index: int | None = None,
                            *, outward_only: bool = False) -> PreparedAction:
        """Propagate the segment from its annotated slice(s) (or ``slice_index``) to the rest of the structure.
        ``outward_only``: after the user edited a slice, redo only the slices beyond it (the re-propagate action)."""
        volume = self._base(volume_node, segmentation_node)
        seed_kji = mrml_bridge.segment_mask_kji(segmentation_node, segment_id, volume_node)
        if not seed_kji.any():
            raise ValueError("the segment is empty: draw or segment it on at least one slice first")
        s = self.options
        mode = s.propagation_mode()  # refuses the box-only reference procedure before anything runs
        request = EngineRequest("propagate", volume, s, {"slice_index": slice_index, "outward_only": outward_only},
                                {"seed_kji": seed_kji})
        prompts = {"model": s.model, "axis": s.axis, "seed_slice": slice_index, "mode": mode}
        return self._prepared("re-propagate" if outward_only else "propagate", volume_node, segmentation_node,
                              segment_id, volume, request, prompts)

    def prepare_fill_between(self, volume_node, segmentation_node, segment_id: str) -> PreparedAction:
        volume = self._base(volume_node, segmentation_node)
        mask_kji = mrml_bridge.segment_mask_kji(segmentation_node, segment_id, volume_node)
        request = EngineRequest("fill_between", volume, self.options, {}, {"mask_kji": mask_kji})
        return self._prepared("fill between slices", volume_node, segmentation_node, segment_id, volume, request,
                              {"axis": self.options.axis})

    def prepare_refine(self, volume_node, segmentation_node, segment_id: str, *, positive_node=None,
                       negative_node=None, scribble_segment_id: str | None = None) -> PreparedAction:
        """Refine a segment with include/exclude clicks (point lists) and an optional scribble segment."""
        return self._prepare_refine(volume_node, segmentation_node, segment_id,
                                    mrml_bridge.control_points_ras(positive_node),
                                    mrml_bridge.control_points_ras(negative_node), scribble_segment_id,
                                    [node.GetID() if node is not None else None
                                     for node in (positive_node, negative_node)])

    def _prepare_refine(self, volume_node, segmentation_node, segment_id, positive_ras, negative_ras,
                        scribble_segment_id, click_node_ids=(None, None)) -> PreparedAction:
        volume = self._base(volume_node, segmentation_node)
        mask_kji = mrml_bridge.segment_mask_kji(segmentation_node, segment_id, volume_node)
        clicks = {}
        for key, ras in (("positive", np.asarray(positive_ras, float).reshape(-1, 3)),
                         ("negative", np.asarray(negative_ras, float).reshape(-1, 3))):
            clicks[key] = volume.ijk_from_lps(mrml_bridge.lps_from_ras(ras)) if len(ras) else np.zeros((0, 3))
            outside = ~volume.contains_ijk(clicks[key]) if len(ras) else np.zeros(0, bool)
            if outside.any():
                raise ValueError(f"{int(outside.sum())} {key} click(s) lie outside the volume")
        scribble = (mrml_bridge.segment_mask_kji(segmentation_node, scribble_segment_id, volume_node)
                    if scribble_segment_id else None)
        if not mask_kji.any() and not len(clicks["positive"]):
            raise ValueError("nothing to refine: the segment is empty and there is no include click")
        s = self.options
        arrays = {"mask_kji": mask_kji} if scribble is None else {"mask_kji": mask_kji, "scribble_kji": scribble}
        request = EngineRequest("refine", volume, s, {"positive_ijk": np.asarray(clicks["positive"]).tolist(),
                                                      "negative_ijk": np.asarray(clicks["negative"]).tolist()}, arrays)
        structure = _segment_name(segmentation_node, segment_id)
        self._attach_prior_head(request, volume_node, structure)
        prompts = {"method": s.refine,
                   "positive_ras": np.asarray(positive_ras, float).reshape(-1, 3).round(3).tolist(),
                   "negative_ras": np.asarray(negative_ras, float).reshape(-1, 3).round(3).tolist(),
                   "positive_node": click_node_ids[0], "negative_node": click_node_ids[1],
                   "scribble_segment": scribble_segment_id}
        return self._prepared("refine", volume_node, segmentation_node, segment_id, volume, request, prompts,
                              scratch_segment_ids=(scribble_segment_id,) if scribble_segment_id else (),
                              structure=structure)

    def prepare_rerun(self, volume_node, segmentation_node, segment_id: str) -> PreparedAction:
        """The action that made this segment, rebuilt from its stored prompts (segment tag) so it can be re-run after
        the user edited them: a moved ROI box or click list is read again from its node when that node still exists,
        otherwise the stored coordinates are used. The result replaces the segment's voxels (one undo step)."""
        prompts = mrml_bridge.get_segment_prompts(segmentation_node, segment_id) if segmentation_node else {}
        action = prompts.get("action")
        if not action:
            raise ValueError("this segment has no stored AI prompts (it was not made by MedFoundationSeg): nothing to "
                             "re-run")

        def node(key):
            return self.scene.GetNodeByID(prompts[key]) if prompts.get(key) else None

        if action == "segment in box":
            roi = node("roi_node")
            if roi is not None:
                return self.prepare_segment_in_roi(volume_node, roi, segmentation_node, segment_id)
            return self._prepare_box(volume_node, prompts["box_ras_mm"], segmentation_node, segment_id, None,
                                     localized_by=prompts.get("localized_by"))
        if action in ("propagate", "re-propagate"):
            return self.prepare_propagation(volume_node, segmentation_node, segment_id, prompts.get("seed_slice"),
                                            outward_only=action == "re-propagate")
        if action == "fill between slices":
            return self.prepare_fill_between(volume_node, segmentation_node, segment_id)
        if action == "refine":
            positive, negative = node("positive_node"), node("negative_node")
            positive_ras = (mrml_bridge.control_points_ras(positive) if positive is not None
                            else prompts.get("positive_ras") or [])
            negative_ras = (mrml_bridge.control_points_ras(negative) if negative is not None
                            else prompts.get("negative_ras") or [])
            scribble = prompts.get("scribble_segment")
            if scribble and segmentation_node.GetSegmentation().GetSegment(scribble) is None:
                scribble = None  # the user deleted the scratch scribbles: re-run with the clicks alone
            return self._prepare_refine(volume_node, segmentation_node, segment_id, positive_ras, negative_ras,
                                        scribble, (prompts.get("positive_node"), prompts.get("negative_node")))
        raise ValueError(f"cannot re-run the stored action {action!r}")

    # --- while a job runs (GUI thread) ------------------------------------------------------------------------------
    def show_preview(self, prepared: PreparedAction, job, *, force: bool = False) -> int:
        """Draw the slices ``job`` has finished so far (slice_preview.py); returns how many are shown."""
        return self.preview.show(job, self.scene.GetNodeByID(prepared.volume_node_id), force=force)

    def clear_preview(self) -> None:
        self.preview.clear()

    # --- apply (GUI thread) -----------------------------------------------------------------------------------------
    def apply(self, prepared: PreparedAction, result: CaseResult | EngineResult, *, segment_name: str = "AI segment",
              color_rgb=(0.9, 0.6, 0.2)) -> EditResult:
        """Write the result. A segment created here gets the action's terminology (a MedLAM box's structure) or, when
        its name is a known organ, the standard terminology entry for that name."""
        volume_node = self.scene.GetNodeByID(prepared.volume_node_id)
        segmentation_node = self.scene.GetNodeByID(prepared.segmentation_node_id)
        if volume_node is None or segmentation_node is None:
            raise ValueError("the volume or segmentation was removed while the action ran; nothing was written")
        if isinstance(result, EngineResult):
            result = result.case_result()
        prompts = dict(prepared.prompts, report=result.report_summary())
        tag = prepared.terminology_tag or terminology.tag_for_structure(segment_name)
        edit = self.history.apply(volume_node, segmentation_node, result.mask_kji, segment_id=prepared.segment_id,
                                  segment_name=segment_name, color_rgb=color_rgb, prompts=prompts,
                                  action=prepared.action, scratch_segment_ids=prepared.scratch_segment_ids,
                                  terminology_tag=tag)
        self._store_head(prepared, result)  # after the segment is written: a store that fails loses nothing
        return edit

    def undo(self) -> str | None:
        return self.history.undo()

    # --- synchronous convenience ------------------------------------------------------------------------------------
    def run(self, prepared: PreparedAction, *, progress=None, cancelled=None, **apply_options) -> EditResult:
        result = prepared.compute(progress=progress, cancelled=cancelled)
        return self.apply(prepared, result, **apply_options)


def _segment_name(segmentation_node, segment_id: str | None) -> str | None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    return segment.GetName() if segment is not None else None
