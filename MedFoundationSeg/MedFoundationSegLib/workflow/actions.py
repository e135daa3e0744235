"""Every action the Slicer panels ask of the engine, as data: an ``EngineRequest`` in, an ``EngineResult`` out.

The same requests run in-process (``run_request``: the CLI, the tests) and in the engine process (the server puts
them on its job queue), so the panels behave the same whichever engine they talk to. Requests and results hold only
JSON-able values and numpy arrays, so they travel as ``core.wire`` messages. Nothing here imports torch at import
time: the Slicer side builds requests and reads results without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core.boxes import StructureBox
from MedFoundationSegLib.core.progress import CancelCheck, Cancelled, ProgressCallback, slices_to
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.workflow.box_modes import registry_click_model
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.results import CaseResult

ACTIONS = ("segment_box", "propagate", "refine", "fill_between", "localize", "fetch_weights")


@dataclasses.dataclass
class TemplateSpec:
    """A template as it travels: its volumes, label ids and extreme points (LPS mm)."""

    name: str
    image: Volume
    labels: Volume | None = None
    label_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    points_lps: dict[str, list] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EngineRequest:
    action: str
    volume: Volume | None = None
    options: Options = dataclasses.field(default_factory=Options)
    params: dict = dataclasses.field(default_factory=dict)  # JSON-able
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    templates: list[TemplateSpec] = dataclasses.field(default_factory=list)  # localize only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; the engine runs {', '.join(ACTIONS)}")


@dataclasses.dataclass
class EngineResult:
    meta: dict
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def case_result(self) -> CaseResult:
        from MedFoundationSegLib.io.head_store import json_to_head_arrays, with_head_wire_arrays

        probability = self.arrays.get("probability_kji")
        head = self.meta.get("head")
        head = None if head is None else with_head_wire_arrays(json_to_head_arrays(head), self.arrays, "head")
        return CaseResult(np.asarray(self.arrays["mask_kji"], bool),
                          None if probability is None else np.asarray(probability, np.float32),
                          dict(self.meta.get("report", {})), head=head)

    def boxes(self) -> dict[str, StructureBox]:
        return {item["name"]: StructureBox.from_dict(item) for item in self.meta.get("boxes", [])}


def error_code(error: BaseException) -> str:
    """The typed error an action failed with (the client shows the message; the code says what kind)."""
    from MedFoundationSegLib.core.errors import ChecksumError, MissingWeightsError, WeightsError

    if isinstance(error, Cancelled):
        return "cancelled"
    if isinstance(error, MissingWeightsError):
        return "missing_weights"
    if isinstance(error, ChecksumError):
        return "corrupt_weights"
    if isinstance(error, WeightsError):
        return "weights"
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return "out_of_memory"
    if isinstance(error, (ValueError, KeyError, FileNotFoundError)):
        return "bad_input"
    return "internal"


def run_request(session, request: EngineRequest, progress: ProgressCallback | None = None,
                cancelled: CancelCheck | None = None, preview=None) -> EngineResult:
    """Run one request on ``session`` (a ``workflow.session.Session``). ``preview``: a ``workflow.preview.SlicePreview``
    that receives each slice as the action finishes it."""
    run = {"segment_box": _segment_box, "propagate": _propagate, "refine": _refine, "fill_between": _fill_between,
           "localize": _localize, "fetch_weights": _fetch_weights}[request.action]
    if request.action != "fetch_weights" and request.volume is None:
        raise ValueError(f"{request.action} needs a volume")
    one_axis = request.options.fusion != "planes"  # fused planes finish slices of three axes: nothing to show
    with slices_to(preview.publish if preview is not None and one_axis else None):
        return run(session, request, progress, cancelled)


def _case(result: CaseResult, request: EngineRequest) -> EngineResult:
    """The mask (and the model's probability only when ``params["probability"]`` asks: it is the bulk of a result),
    with the structure head the action learned, as JSON (``meta["head"]``), for the caller's head store."""
    arrays = {"mask_kji": np.asarray(result.mask_kji, bool)}
    if result.probability_kji is not None and request.params.get("probability"):
        arrays["probability_kji"] = np.asarray(result.probability_kji, np.float16)
    meta = {"report": _jsonable(result.report)}
    if result.head is not None:
        from MedFoundationSegLib.io.head_store import head_to_json, head_wire_arrays

        meta["head"] = head_to_json(result.head)
        arrays.update(head_wire_arrays(result.head, "head"))
    return EngineResult(meta, arrays)


def _prior_head(request: EngineRequest):
    """The head from earlier volumes the caller sent (``params["prior_head"]``, JSON, and its atlas grids as arrays
    ``prior_head.*``), or None."""
    value = request.params.get("prior_head")
    if value is None:
        return None
    from MedFoundationSegLib.workflow.learning import head_from_json

    head = head_from_json(value, request.arrays)
    if head.model != request.options.model:
        raise ValueError(f"the structure head was learned with {head.model}; this action uses "
                         f"{request.options.model}")
    return head


def _mask(request: EngineRequest, name: str) -> np.ndarray:
    if name not in request.arrays:
        raise ValueError(f"{request.action} needs the array {name!r}")
    mask = np.asarray(request.arrays[name], bool)
    if mask.shape != request.volume.shape_kji:
        raise ValueError(f"{name} has shape {mask.shape}; the volume is {request.volume.shape_kji}")
    return mask


def _segment_box(session, request, progress, cancelled) -> EngineResult:
    params = request.params
    extreme = params.get("extreme_points_ijk")
    result = session.segment_box(request.volume, params["box_ijk"], request.options,
                                 extreme_points_ijk=None if extreme is None else np.asarray(extreme, float),
                                 prior_head=_prior_head(request), progress=progress, cancelled=cancelled)
    session.evidence.remember(request.volume.identity(), result.mask_kji, result.probability_kji, params["box_ijk"])
    session.ready_click_model(request.volume, params["box_ijk"], request.options)  # the panel's clicks come next
    if request.options.learn and result.report.get("model") == request.options.model:  # the head fits its embeddings
        from MedFoundationSegLib.core import geometry
        from MedFoundationSegLib.workflow.learning import ready_cells

        box = geometry.slice_box(geometry.check_box_ijk(request.volume, params["box_ijk"]), request.options.axis)
        ready_cells(session.segmenter(request.volume, request.options), box)
    return _case(result, request)


def _propagate(session, request, progress, cancelled) -> EngineResult:
    params = request.params
    return _case(session.propagate(request.volume, _mask(request, "seed_kji"), request.options,
                                   slice_index=params.get("slice_index"),
                                   outward_only=bool(params.get("outward_only", False)), progress=progress,
                                   cancelled=cancelled), request)


def _refine(session, request, progress, cancelled) -> EngineResult:
    params = request.params
    scribble = _mask(request, "scribble_kji") if "scribble_kji" in request.arrays else None
    points = {key: np.asarray(params.get(key) or np.zeros((0, 3)), float).reshape(-1, 3)
              for key in ("positive_ijk", "negative_ijk")}
    mask, prior = _mask(request, "mask_kji"), _prior_head(request)
    identity = request.volume.identity()
    result = session.refine(request.volume, mask, request.options, positive_ijk=points["positive_ijk"],
                            negative_ijk=points["negative_ijk"], scribble_kji=scribble,
                            evidence=session.evidence.recall(identity, mask), prior_head=prior,
                            progress=progress, cancelled=cancelled)
    session.evidence.remember(identity, result.mask_kji, result.probability_kji,
                              result.report.get("correction", {}).get("box_ijk"))
    return _case(result, request)


def _fill_between(session, request, progress, cancelled) -> EngineResult:
    from MedFoundationSegLib.workflow.fill_between import fill_between_slices

    return _case(fill_between_slices(_mask(request, "mask_kji"), axis=request.options.axis, progress=progress,
                                     cancelled=cancelled), request)


def _localize(session, request, progress, cancelled) -> EngineResult:
    from MedFoundationSegLib.localize.engines import choose_localizer, localize
    from MedFoundationSegLib.localize.templates import Template, TemplateSet

    if not request.templates:
        raise ValueError("localization needs at least one template")
    template_set = TemplateSet([Template.from_volumes(t.name, t.image, t.labels, t.label_ids,
                                                      {k: np.asarray(v, float) for k, v in t.points_lps.items()})
                                for t in request.templates])
    o = request.options
    engine, reason = choose_localizer(o.engine, request.params.get("medlam_weights", "medlam"))
    boxes = localize(template_set, request.volume, engine, structures=request.params.get("structures"), seed=o.seed,
                     spl=o.spl, slice_interval=o.slice_interval, recentre_iterations=o.recentre_iterations,
                     medlam_weights=request.params.get("medlam_weights", "medlam"), progress=progress,
                     cancelled=cancelled)
    return EngineResult({"engine": engine, "reason": reason,
                         "boxes": [_jsonable(box.to_dict()) for box in boxes.values()]})


def _fetch_weights(session, request, progress, cancelled) -> EngineResult:
    """The model's weights, and those of the model that answers its clicked slices (Options.click_model "auto")."""
    from MedFoundationSegLib.core.weights import fetch_job

    name = str(request.params["name"])
    paths = {"path": str(fetch_job(name, progress=progress, cancelled=cancelled))}
    helper = registry_click_model(name)
    if helper:
        paths["click_model_path"] = str(fetch_job(helper, progress=progress, cancelled=cancelled))
    return EngineResult(paths)


def _jsonable(value):
    """Reports hold numpy scalars and arrays here and there; the wire takes plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
