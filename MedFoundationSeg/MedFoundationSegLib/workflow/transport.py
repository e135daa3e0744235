"""Engine requests, results and volumes as wire messages, both ways (the client and the engine process share this).

A job message carries the action, the ids of the volumes the engine already holds, the options, JSON parameters and
the arrays; the engine checks every part (known action, known option values, volume ids it holds, array sizes)
before it queues anything. Paths never travel: a template is its volumes and points, weights are registry names.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedFoundationSegLib.core import wire
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.workflow.actions import ACTIONS, EngineRequest, EngineResult, TemplateSpec
from MedFoundationSegLib.workflow.options import Options

# The contract between the Slicer side and the engine: what a request asks and what a result holds (the engine, for
# one, counts a learned head's volumes). Raised whenever either side's reading of them changes; a client refuses an
# engine that speaks another (engine_client.EngineClient.check_engine).
PROTOCOL = 2
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# Weights a request may name: registry names only (a path from a request is never opened).
REQUEST_WEIGHTS = ("medlam",)


def encode_volume(volume: Volume) -> bytes:
    meta = {"spacing_mm": list(volume.spacing_mm), "origin_lps_mm": list(volume.origin_lps_mm),
            "direction": np.asarray(volume.direction, float).tolist(), "name": volume.name}
    return wire.pack(meta, {"voxels": volume.array}, compress=False)  # CT noise compresses poorly; no extra copy


def volume_from_message(data: bytes, max_bytes: int) -> tuple[dict, np.ndarray]:
    meta, arrays = wire.unpack(data, max_voxels=max_bytes)
    voxels = arrays.get("voxels")
    if voxels is None or voxels.ndim != 3 or min(voxels.shape) < 1:
        raise ValueError("a volume message holds one 3D array 'voxels' with every size >= 1")
    if voxels.dtype.name not in VOLUME_DTYPES:
        raise ValueError(f"volume voxels of type {voxels.dtype.name} are not accepted; use {', '.join(VOLUME_DTYPES)}")
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise ValueError("the volume holds NaN or infinite voxel values")
    spacing = np.asarray(meta.get("spacing_mm"), float)
    direction = np.asarray(meta.get("direction"), float)
    origin = np.asarray(meta.get("origin_lps_mm"), float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing) & (spacing > 0)) or origin.shape != (3,) \
            or not np.all(np.isfinite(origin)) or direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
        raise ValueError("volume geometry needs spacing_mm (3 values > 0), origin_lps_mm (3) and direction (3x3)")
    return {"spacing_mm": spacing.tolist(), "origin_lps_mm": origin.tolist(), "direction": direction.tolist(),
            "name": str(meta.get("name", ""))[:200]}, voxels


def encode_job(request: EngineRequest, volume_ids: dict[int, str]) -> bytes:
    """``volume_ids``: id(volume) -> the id the engine gave it (every volume of the request was sent first)."""
    templates = [{"name": t.name, "image": volume_ids[id(t.image)],
                  "labels": None if t.labels is None else volume_ids[id(t.labels)], "label_ids": t.label_ids,
                  "points_lps": {k: np.asarray(v, float).tolist() for k, v in t.points_lps.items()}}
                 for t in request.templates]
    meta = {"action": request.action, "volume": None if request.volume is None else volume_ids[id(request.volume)],
            "options": _options_dict(request.options), "params": request.params, "templates": templates}
    return wire.pack(meta, request.arrays)


def decode_job(data: bytes, volumes, max_bytes: int) -> EngineRequest:
    """An EngineRequest from a job message; ``volumes`` resolves volume ids (KeyError names a missing one)."""
    meta, arrays = wire.unpack(data, max_voxels=max_bytes)
    action = meta.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; the engine runs {', '.join(ACTIONS)}")
    options = _options_from(meta.get("options") or {})
    params = meta.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError("params must be a JSON object")
    if params.get("medlam_weights", "medlam") not in REQUEST_WEIGHTS:
        raise ValueError(f"medlam_weights must be one of {', '.join(REQUEST_WEIGHTS)} (a registry name)")
    volume = volumes.get(meta["volume"]) if meta.get("volume") else None
    templates = [TemplateSpec(str(t["name"]), volumes.get(t["image"]),
                              volumes.get(t["labels"]) if t.get("labels") else None,
                              {str(k): int(v) for k, v in (t.get("label_ids") or {}).items()},
                              {str(k): v for k, v in (t.get("points_lps") or {}).items()})
                 for t in meta.get("templates") or []]
    return EngineRequest(action, volume, options, params, arrays, templates)


def encode_result(result: EngineResult) -> bytes:
    return wire.pack(result.meta, result.arrays)


def decode_result(data: bytes) -> EngineResult:
    meta, arrays = wire.unpack(data)
    return EngineResult(meta, arrays)


def job_status(job, worker) -> dict:
    """What a client polls: state, progress, jobs ahead, and a typed error when it failed."""
    from MedFoundationSegLib.workflow.actions import error_code

    if not job.done:
        ahead = worker.jobs_ahead(job)
        state = "queued" if ahead else "running"
        return {"state": state, "fraction": job.fraction, "jobs_ahead": ahead,
                "message": f"waiting for {ahead} job(s) on the engine" if ahead else job.message}
    if job.error is None:
        return {"state": "done", "fraction": 1.0, "message": job.message}
    code = error_code(job.error)
    return {"state": "cancelled" if code == "cancelled" else "failed", "fraction": job.fraction,
            "message": job.message, "error": {"code": code, "message": " ".join(str(job.error).split())}}


def _options_dict(options: Options) -> dict:
    return dataclasses.asdict(options)


def _options_from(values: dict) -> Options:
    if not isinstance(values, dict):
        raise ValueError("options must be a JSON object")
    known = {field.name for field in dataclasses.fields(Options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}")
    return Options(**values)
