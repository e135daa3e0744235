"""One command for the issue-7 benchmarks: accuracy, interactive correction, localization, speed and memory on public
data (Colin27 T1 + AAL, deformed copies as other subjects) and on the project's CT phantoms. Writes
benchmarks/report.md and PNGs under benchmarks/report_files/. Not part of CI.

    python benchmarks/run_benchmarks.py --quick     # 3 AAL structures x 2 deformed queries, 2 phantoms, small speed
                                                    # sweep: tens of minutes on a loaded 2-core CPU
    python benchmarks/run_benchmarks.py             # full: 22 AAL structures x 2 queries, 10 phantoms, wider sweep
                                                    # (about two hours on a 2-core CPU)
    python benchmarks/run_benchmarks.py --resume    # continue an interrupted run (state saved after every case)

Needs matplotlib (benchmarks/requirements.txt) and the LiteMedSAM and MobileSAM weights
(`medfoundationseg weights fetch litemedsam|mobilesam`). MedLAM rows run only when its weights are cached.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from click_sim import click_session, noc  # noqa: E402
from seg_metrics import all_metrics  # noqa: E402

MODELS = ("litemedsam", "mobilesam")
AAL_QUICK = ("Putamen_L", "Thalamus_L", "Pallidum_L")
# Ordered so that any first N mix sizes and shapes (subsets below take the first N): deep grey nuclei, then the
# medial temporal lobe, then cortical regions (thin, folded, long), then the right-side counterparts.
AAL_FULL = ("Caudate_L", "Putamen_L", "Pallidum_L", "Thalamus_L", "Hippocampus_L", "Amygdala_L", "Insula_L",
            "Calcarine_L", "Caudate_R", "Putamen_R", "Pallidum_R", "Thalamus_R", "Hippocampus_R", "Amygdala_R",
            "Insula_R", "Cuneus_L", "Lingual_L", "Fusiform_L", "Precuneus_L", "Cingulum_Ant_L", "Temporal_Sup_L",
            "Frontal_Sup_L")
PHANTOM_QUICK = ("liver", "kidney_left")
PHANTOM_FULL = ("liver", "kidney_left", "pancreas", "spleen", "kidney_right", "stomach")  # first N: mixed sizes

# models: every segmentation row runs for these; mobilesam_structures / click_structures: the first N structures of
# each case get MobileSAM rows / simulated clicks (all of them when N >= the count); click_modes: see run_clicks.
CONFIGS = {
    "quick": dict(aal=AAL_QUICK, queries=2, phantom_structures=PHANTOM_QUICK, phantoms=2, phantom_shape=(48, 128, 128),
                  models=MODELS, mobilesam_structures=99, click_structures=99, click_models=("litemedsam",),
                  click_modes=("graphcut", "reprompt"), clicks=10, slice_counts=(4, 8, 16), inplane=(96, 192),
                  inplane_slices=8, speed_reps=1),
    # full: 110 min on a 2-core AVX2 CPU (MobileSAM and clicks on subsets; see the report)
    "full": dict(aal=AAL_FULL, queries=2, phantom_structures=PHANTOM_FULL, phantoms=10, phantom_shape=(48, 128, 128),
                 models=MODELS, mobilesam_structures=dict(colin27=8, phantom=6),
                 click_structures=dict(colin27=6, phantom=3), click_models=MODELS,
                 click_modes=("graphcut", "reprompt"), clicks=10, slice_counts=(4, 8, 16, 24),
                 inplane=(128, 256, 512), inplane_slices=4, speed_reps=1),
}

# (method key, label in the tables)
METHODS = {
    "gt_box": "GT 3D box (manual prompt)",
    "gt_box_refined": "GT 3D box + graph-cut refinement",
    "localized": "localized box (registration)",
    "localized_refined": "localized box + graph-cut refinement",
    "seed_slice": "one seed slice, propagated",
    "reference": "peer reference (LiteMedSAM 3D, GT box)",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data -------------------------------------------------------------------------------------------------------------

def bias_field(shape_kji, seed: int, strength: float = 0.15) -> np.ndarray:
    """A smooth multiplicative field (1 +- strength) from a few low-frequency cosines: MRI-like intensity bias."""
    rng = np.random.default_rng(seed + 7)
    grids = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape_kji], indexing="ij", sparse=True)
    field = sum(rng.uniform(-1, 1) * np.cos(rng.integers(1, 3) * g + rng.uniform(0, np.pi)) for g in grids)
    return (1 + strength * field / 3).astype(np.float32)


def colin_cases(names: tuple[str, ...], queries: int):
    """The template (original Colin27) and ``queries`` deformed copies (affine + elastic + bias + noise), each as
    (name, factory): a copy is only built when its case runs, so a resumed run skips the finished ones' warps."""
    from MedFoundationSegLib.localize.templates import Template, TemplateSet
    from MedFoundationSegLib.sampledata.deform import deformed_copy
    from public_data import load_colin27

    image, labels, aal_names = load_colin27()
    ids = {name: label for label, name in aal_names.items() if name in names}
    missing = sorted(set(names) - set(ids))
    if missing:
        raise ValueError(f"AAL has no structures {missing}")
    ids = {name: ids[name] for name in names}  # the configured order
    keep = np.isin(labels.array, list(ids.values()))
    template = Template.from_volumes("colin27", image, labels.with_array(np.where(keep, labels.array, 0)), ids)

    def make(q):
        warped, warped_labels = deformed_copy(image, labels, seed=1000 + q)
        array = warped.array * bias_field(warped.array.shape, q)
        array = array + np.random.default_rng(q).normal(0, 0.03 * float(image.array.max()), array.shape)
        return warped.with_array(np.clip(array, 0, None).astype(np.float32)), warped_labels, ids

    return TemplateSet([template]), [(f"colin_warp{q}", lambda q=q: make(q)) for q in range(queries)]


def phantom_cases(structures: tuple[str, ...], count: int, shape):
    from MedFoundationSegLib.localize.templates import TemplateSet
    from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom

    template = template_from_phantom("phantom100", make_phantom(100, shape), list(structures))

    def make(seed):
        phantom = make_phantom(seed, shape)
        return phantom.image, phantom.labels, {name: phantom.label_ids[name] for name in structures}

    return TemplateSet([template]), [(f"phantom{101 + n}", lambda s=101 + n: make(s)) for n in range(count)]


# --- one case ---------------------------------------------------------------------------------------------------------

def box_ijk_of(mask_kji: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask_kji)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


def localization_rows(dataset, case, image, labels, ids, boxes, engine) -> list[dict]:
    from MedFoundationSegLib.localize.templates import Template
    from MedFoundationSegLib.sampledata import metrics

    truth_template = Template.from_volumes("truth", image, labels, ids)
    rows = []
    for name, label in ids.items():
        truth_box = box_ijk_of(labels.array == label)
        box = boxes[name]
        row = {"dataset": dataset, "case": case, "structure": name, "engine": engine, "present": bool(box.present)}
        if box.present and box.box_ijk is not None:
            row.update(iou=metrics.box_iou_voxels(np.asarray(box.box_ijk, float), truth_box),
                       wall_mm=metrics.wall_distance_mm(box.box_ijk, truth_box, np.asarray(image.spacing_mm)),
                       extreme_mm=float(metrics.extreme_point_distance_mm(
                           box.extreme_points_lps, truth_template.extreme_points(name)).mean()))
        rows.append(row)
    return rows


def montage_planes(image, truth, pred, k: int, margin: int = 12) -> dict:
    """The axial plane ``k`` of image, truth and prediction, cropped around both masks: all the montage needs, small
    enough to keep for every structure in the saved state."""
    _, j, i = np.nonzero(truth[k:k + 1] | pred[k:k + 1])
    rows = slice(max(0, j.min() - margin), j.max() + margin + 1)
    cols = slice(max(0, i.min() - margin), i.max() + margin + 1)
    lo, hi = np.percentile(image.array[k], [1, 99])
    return dict(k=k, image=image.array[k, rows, cols].astype(np.float32), truth=truth[k, rows, cols].copy(),
                pred=pred[k, rows, cols].copy(), lo_hi=(float(lo), float(hi)))


def reprompt_probability(session, image, model, probability_kji, box_ijk, positive_kji, negative_kji,
                         pad_mm: float = 5.0) -> np.ndarray:
    """The clicked slices re-segmented by the model itself: box (padded as in box mode) + every click on that slice
    as point prompts; the other slices keep their probability. Why: a click is the model's own prompt type, so it can
    move the boundary on the whole slice, not only in a hard-seed disk."""
    predictor = session.predictor(image, model=model)
    spacing = np.asarray(image.spacing_mm, float)
    pad_i, pad_j = (int(round(pad_mm / spacing[0])), int(round(pad_mm / spacing[1])))
    ni, nj = image.shape_kji[2], image.shape_kji[1]
    box_xyxy = np.array([max(box_ijk[0][0] - pad_i, 0), max(box_ijk[0][1] - pad_j, 0),
                         min(box_ijk[1][0] + pad_i, ni - 1), min(box_ijk[1][1] + pad_j, nj - 1)], float)
    out = probability_kji.copy()
    clicks = [(c, 1) for c in positive_kji] + [(c, 0) for c in negative_kji]
    for k in sorted({int(c[0]) for c, _ in clicks}):
        on_k = [(c, label) for c, label in clicks if int(c[0]) == k]
        points_xy = np.array([[c[2], c[1]] for c, _ in on_k], float)
        prediction = predictor.predict(k, boxes=box_xyxy, points=points_xy,
                                       point_labels=np.array([label for _, label in on_k]), with_probability=True)
        out[k] = prediction.probability[0, 0]
    return out


def run_clicks(session, image, model, start, box_ijk, truth, spacing_kji, budget: int, mode: str):
    """One simulated correction session from ``start`` (a CaseResult with the model probability), shown to the user
    already refined (graph cut with the box, no clicks), so click 0 is the refined start and later gains are the
    clicks' own. ``graphcut``: the plugin's Refine: the graph cut re-solved from the start's probability with every
    click so far as a hard disk.
    ``reprompt``: the clicked slices are first re-segmented by the model with the clicks as point prompts (see
    reprompt_probability), then the same graph cut. Both keep every earlier click."""
    from MedFoundationSegLib.workflow.results import CaseResult

    def refine_with(positive_kji, negative_kji):
        base = start
        if mode == "reprompt":
            probability = start.probability_kji if start.probability_kji is not None else \
                start.mask_kji.astype(np.float32)
            base = CaseResult(start.mask_kji, reprompt_probability(session, image, model, probability, box_ijk,
                                                                   positive_kji, negative_kji), dict(start.report))
        out = session.refine_result(image, base, method="graphcut", box_ijk=box_ijk,
                                    positive_ijk=positive_kji[:, ::-1] if len(positive_kji) else None,
                                    negative_ijk=negative_kji[:, ::-1] if len(negative_kji) else None)
        return out.mask_kji

    shown = refine_with(np.zeros((0, 3), int), np.zeros((0, 3), int))  # what the user sees before clicking
    t0 = time.perf_counter()
    dices, clicks = click_session(refine_with, shown, truth, spacing_kji, budget)
    return dict(dices=dices, clicks=len(clicks), positive=int(sum(p for _, p in clicks)),
                seconds_per_click=(time.perf_counter() - t0) / max(len(clicks), 1))


def first_n(setting, dataset: str) -> int:
    """A subset size from the config: one number for every dataset or {dataset: number}."""
    return int(setting[dataset] if isinstance(setting, dict) else setting)


def evaluate_case(dataset, case, image, labels, ids, template_set, cfg, engine, state, save) -> None:
    """Every row of every model on one case, added to ``state`` and saved (``save()``) after each structure and
    model, so an interrupted run loses at most one structure's work; units already in the state are skipped."""
    from MedFoundationSegLib.localize.engines import localize
    from MedFoundationSegLib.workflow.session import Session

    if case not in state["boxes"]:
        start = time.perf_counter()
        boxes = localize(template_set, image, engine, structures=list(ids))
        localize_s = time.perf_counter() - start
        loc_rows = localization_rows(dataset, case, image, labels, ids, boxes, engine)
        for row in loc_rows:
            row["seconds_all_structures"] = localize_s
        state["loc"] += loc_rows
        state["boxes"][case] = {name: (np.asarray(b.box_ijk) if b.present and b.box_ijk is not None else None)
                                for name, b in boxes.items()}
        save()
        log(f"{case}: localized {len(ids)} structures in {localize_s:.1f} s")
    boxes = state["boxes"][case]
    spacing_kji = tuple(np.asarray(image.spacing_mm, float)[::-1])
    session = Session()
    mobile = list(ids)[:first_n(cfg["mobilesam_structures"], dataset)]
    for name, label in ids.items():  # structure-outer: a stopped run has both models for the structures it did
        for model in [m for m in cfg["models"] if m == "litemedsam" or name in mobile]:
            if (case, name, model) in state["units"]:
                continue
            seg_rows, click_rows, planes = [], [], {}
            truth = labels.array == label
            gt_box = box_ijk_of(truth)
            seed_k = int(np.argmax(truth.sum(axis=(1, 2))))
            t_structure = time.perf_counter()

            def record(method, result, seconds):
                metrics_ = all_metrics(result.mask_kji, truth, image.spacing_mm)
                seg_rows.append(dict(dataset=dataset, case=case, structure=name, model=model, method=method,
                                     seconds=seconds, slices=int(np.ptp(np.flatnonzero(truth.any((1, 2)))) + 1),
                                     **metrics_))
                if (method, model) == ("localized_refined", "litemedsam"):  # the montage's procedure
                    planes[(case, name, model, method)] = dict(
                        montage_planes(image, truth, result.mask_kji, seed_k), dice=metrics_["dice"],
                        dataset=dataset, case=case, structure=name)

            def timed(fn):
                t0 = time.perf_counter()
                out = fn()
                return out, time.perf_counter() - t0

            # A manual box is exact: no padding, as the peer gets it (5 mm of padding took Putamen_L from 0.632 to
            # 0.365 on Colin27; the padding is for localized boxes, whose walls are uncertain).
            gt, s = timed(lambda: session.segment_box(image, gt_box, model=model, padding_mm=0.0))
            record("gt_box", gt, s)
            ref, s = timed(lambda: session.refine_result(image, gt, method="graphcut", box_ijk=gt_box))
            record("gt_box_refined", ref, s)
            box_ijk = boxes[name]
            localized = None
            if box_ijk is not None:
                localized, s = timed(lambda: session.segment_box(image, box_ijk, model=model))
                record("localized", localized, s)
                refined, s = timed(lambda: session.refine_result(image, localized, method="graphcut",
                                                                 box_ijk=box_ijk))
                record("localized_refined", refined, s)
            seed = np.zeros_like(truth)
            seed[seed_k] = truth[seed_k]
            propagated, s = timed(lambda: session.propagate(image, seed, slice_index=seed_k, model=model))
            record("seed_slice", propagated, s)
            peer = None
            if model == "litemedsam":
                peer, s = timed(lambda: session.segment_box(image, gt_box, model=model, mode="reference"))
                record("reference", peer, s)
            starts = [("localized", localized, box_ijk)]
            if peer is not None:
                starts.append(("reference", peer, gt_box))
            for start_name, start_result, start_box in starts:
                if start_result is None or name not in list(ids)[:first_n(cfg["click_structures"], dataset)] or \
                        model not in cfg["click_models"]:
                    continue
                for mode in cfg["click_modes"]:
                    row = run_clicks(session, image, model, start_result, start_box, truth, spacing_kji,
                                     cfg["clicks"], mode)
                    click_rows.append(dict(row, dataset=dataset, case=case, structure=name, model=model,
                                           start=start_name, mode=mode))
            state["seg"] += seg_rows
            state["clicks"] += click_rows
            state["planes"].update(planes)
            state["units"].append((case, name, model))
            state["case_seconds"][case] = state["case_seconds"].get(case, 0.0) + time.perf_counter() - t_structure
            save()
            log(f"{case} {model} {name} ({time.perf_counter() - t_structure:.0f} s): " +
                ", ".join(f"{r['method']} {r['dice']:.3f}" for r in seg_rows) +
                "".join(f"; clicks {r['start']}/{r['mode']} " + " ".join(f"{d:.2f}" for d in r["dices"])
                        for r in click_rows))


# --- speed (child processes so each procedure's peak RSS is its own) ----------------------------------------------------

PROCEDURES = (("optimized", "litemedsam"), ("reference", "litemedsam"), ("optimized", "mobilesam"))


def _run_procedure(procedure: str, model: str, phantom, n: int) -> tuple[int, float]:
    """One structure (liver) over ``n`` slices from its box; returns (slices, seconds) including predictor set-up."""
    from MedFoundationSegLib.segment import reference
    from MedFoundationSegLib.segment.predictor import SlicePredictor
    from MedFoundationSegLib.segment.segmenter import PredictorSegmenter
    from MedFoundationSegLib.workflow.session import Session

    truth = phantom.labels.array == phantom.label_ids["liver"]
    box = box_ijk_of(truth)
    middle = (box[0, 2] + box[1, 2]) // 2
    box[0, 2] = max(0, middle - n // 2)
    box[1, 2] = min(truth.shape[0] - 1, box[0, 2] + n - 1)
    start = time.perf_counter()
    if procedure == "reference":
        predictor = SlicePredictor(phantom.image, model, precision="fp32", optimize=False, cache_bytes=0,
                                   batch_size=1)
        (i0, j0, k0), (i1, j1, k1) = box
        reference.reference_litemedsam(PredictorSegmenter(predictor), truth.shape, (i0, j0, k0, i1, j1, k1))
    else:
        Session().segment_box(phantom.image, box, model=model)
    return int(box[1, 2] - box[0, 2] + 1), time.perf_counter() - start


def _peak_rss_mb() -> float:
    """VmHWM (peak resident set) of this process in MB; reset with _reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def speed_child(task: str, slice_counts, inplane, inplane_slices, reps: int, procedure=None, model=None) -> dict:
    """``timing``: every procedure interleaved in this one process (ratios are fair on a shared machine; the median
    of ``reps`` repeats is kept). ``memory``: one procedure on the largest slice count; peak RSS from the moment the
    phantom exists (model load included)."""
    from MedFoundationSegLib.sampledata.phantoms import make_phantom

    big = make_phantom(3, (max(slice_counts) + 24, 128, 128))
    if task == "memory":
        base = _peak_rss_mb()
        reset = _reset_peak_rss()
        _run_procedure(procedure, model, big, max(slice_counts))
        return {"procedure": procedure, "model": model, "slices": max(slice_counts), "peak_rss_mb": _peak_rss_mb(),
                "before_mb": base, "reset": reset}
    for procedure, model in PROCEDURES:  # warm-up: first-call library costs are not per-slice costs
        _run_procedure(procedure, model, big, 2)
    out = {f"{p} {m}": {"procedure": p, "model": m, "slices": [], "inplane": []} for p, m in PROCEDURES}

    def measure(phantom, n, key, extra):
        times = {name: [] for name in out}
        for rep in range(reps):
            for procedure, model in (PROCEDURES if rep % 2 == 0 else PROCEDURES[::-1]):
                used, seconds = _run_procedure(procedure, model, phantom, n)
                times[f"{procedure} {model}"].append(seconds)
        for name, values in times.items():
            out[name][key].append(dict(extra, slices=used, seconds=float(np.median(values))))

    for n in slice_counts:
        measure(big, n, "slices", {})
    for size in inplane:
        measure(make_phantom(3, (inplane_slices + 24, size, size)), inplane_slices, "inplane", {"size": size})
    return out


def speed(cfg) -> list[dict]:
    def child(*payload):
        done = subprocess.run([sys.executable, __file__, "--speed-child", json.dumps(payload)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"speed child {payload[0]} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    common = (list(cfg["slice_counts"]), list(cfg["inplane"]), cfg["inplane_slices"], cfg["speed_reps"])
    log("speed: interleaved timing of all procedures in one process")
    timing = child("timing", *common)
    rows = []
    for procedure, model in PROCEDURES:
        log(f"speed: peak memory of {procedure} {model}")
        memory = child("memory", *common, procedure, model)
        row = timing[f"{procedure} {model}"]
        row.update(peak_rss_mb=memory["peak_rss_mb"], memory_slices=memory["slices"])
        rows.append(row)
        log(f"speed: {row}")
    return rows


# --- report -----------------------------------------------------------------------------------------------------------

def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _fmt(value, digits=3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def accuracy_table(rows, dataset) -> list[str]:
    lines = ["| procedure | model | n | Dice mean ± sd | Dice median | HD95 mm | ASSD mm | end-slice err (slices, "
             "mean abs lower/upper) | empty | s per structure |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, label in METHODS.items():
        for model in MODELS:
            sel = [r for r in rows if r["dataset"] == dataset and r["method"] == method and r["model"] == model]
            if not sel:
                continue
            d = [r["dice"] for r in sel]
            lines.append(
                f"| {label} | {model} | {len(sel)} | {np.mean(d):.3f} ± {np.std(d):.3f} | {np.median(d):.3f} | "
                f"{_fmt(_mean(r['hd95_mm'] for r in sel), 1)} | {_fmt(_mean(r['assd_mm'] for r in sel), 2)} | "
                f"{_fmt(_mean(abs(r['end_lower']) for r in sel), 1)} / {_fmt(_mean(abs(r['end_upper']) for r in sel), 1)}"
                f" | {sum(r['empty'] for r in sel)} | {_mean(r['seconds'] for r in sel):.2f} |")
    return lines


def per_structure_table(rows, dataset) -> list[str]:
    structures = list(dict.fromkeys(r["structure"] for r in rows if r["dataset"] == dataset))
    lines = ["| procedure | model | " + " | ".join(structures) + " |", "|---|---|" + "---|" * len(structures)]
    for method, label in METHODS.items():
        for model in MODELS:
            cells = []
            for s in structures:
                sel = [r["dice"] for r in rows if r["dataset"] == dataset and r["method"] == method
                       and r["model"] == model and r["structure"] == s]
                cells.append(f"{np.mean(sel):.3f}" if sel else "")
            if any(cells):
                lines.append(f"| {label} | {model} | " + " | ".join(cells) + " |")
    return lines


CLICK_STARTS = {"localized": "localized box (registration)", "reference": "peer reference (LiteMedSAM 3D, GT box)"}


def click_groups(click_rows):
    """(dataset, model, start, mode) keys in a stable order."""
    return list(dict.fromkeys((r["dataset"], r["model"], r["start"], r["mode"]) for r in click_rows))


def click_table(click_rows, budget) -> list[str]:
    lines = ["| dataset | start | model | click handling | n | mean Dice after click 0, 1, 2, 3, 5, 10 | "
             "NoC@85 | NoC@90 | failures@90 | s per click |", "|---|---|---|---|---|---|---|---|---|---|"]
    shown = [c for c in (0, 1, 2, 3, 5, 10) if c <= budget]
    for key in click_groups(click_rows):
        sel = [r for r in click_rows if (r["dataset"], r["model"], r["start"], r["mode"]) == key]
        curve = np.mean([r["dices"] for r in sel], axis=0)
        n85 = np.mean([noc(r["dices"], 0.85, budget) for r in sel])
        n90 = np.mean([noc(r["dices"], 0.90, budget) for r in sel])
        fails = sum(max(r["dices"]) < 0.90 for r in sel)
        lines.append(f"| {key[0]} | {CLICK_STARTS[key[2]]} | {key[1]} | {key[3]} | {len(sel)} | " +
                     " / ".join(f"{curve[c]:.3f}" for c in shown) + f" | {n85:.1f} | {n90:.1f} | {fails} | "
                     f"{np.mean([r['seconds_per_click'] for r in sel]):.2f} |")
    return lines


def localization_table(loc_rows, medlam_note) -> list[str]:
    lines = ["| dataset | structure | engine | n | box IoU | wall distance mm | extreme-point error mm | absent |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in loc_rows):
        for structure in dict.fromkeys(r["structure"] for r in loc_rows if r["dataset"] == dataset):
            sel = [r for r in loc_rows if r["dataset"] == dataset and r["structure"] == structure]
            ok = [r for r in sel if "iou" in r]
            lines.append(f"| {dataset} | {structure} | {sel[0]['engine']} | {len(sel)} | "
                         f"{_fmt(_mean(r['iou'] for r in ok))} | {_fmt(_mean(r['wall_mm'] for r in ok), 2)} | "
                         f"{_fmt(_mean(r['extreme_mm'] for r in ok), 2)} | {len(sel) - len(ok)} |")
    lines.append(f"| all | all | medlam | 0 | not run: {medlam_note} | | | |")
    lines.append("| all | all | peer reference (LiteMedSAM 3D) | 0 | none: the peer procedure takes a manual (GT) "
                 "box, it has no localization | | | |")
    return lines


def speed_fits(speed_rows) -> list[str]:
    """Linear fit seconds = fixed + per_slice * slices for each procedure."""
    lines = ["| procedure | model | fixed cost s (intercept) | marginal s per slice (slope) |", "|---|---|---|---|"]
    for r in speed_rows:
        n = np.array([p["slices"] for p in r["slices"]], float)
        t = np.array([p["seconds"] for p in r["slices"]], float)
        if len(n) >= 2:
            slope, intercept = np.polyfit(n, t, 1)
            lines.append(f"| {r['procedure']} | {r['model']} | {intercept:.1f} | {slope:.2f} |")
    return lines


def speed_table(speed_rows) -> list[str]:
    lines = ["| procedure | model | slices | in-plane | seconds | s per slice | peak RSS MB (own child) |",
             "|---|---|---|---|---|---|---|"]
    for r in speed_rows:
        for p in r["slices"]:
            lines.append(f"| {r['procedure']} | {r['model']} | {p['slices']} | 128x128 | {p['seconds']:.1f} | "
                         f"{p['seconds'] / p['slices']:.2f} | {r['peak_rss_mb']:.0f} |")
        for p in r["inplane"]:
            lines.append(f"| {r['procedure']} | {r['model']} | {p['slices']} | {p['size']}x{p['size']} | "
                         f"{p['seconds']:.1f} | {p['seconds'] / p['slices']:.2f} | {r['peak_rss_mb']:.0f} |")
    return lines


def plot_dice(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = list(dict.fromkeys((r["dataset"], r["structure"]) for r in rows))
    series = [(m, model) for m in METHODS for model in MODELS if any(r["method"] == m and r["model"] == model
                                                                       for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(structures) + 2), 5), dpi=80)
    width = 0.8 / len(series)
    colors = plt.get_cmap("tab10").colors
    for n, (method, model) in enumerate(series):
        values = [_mean(r["dice"] for r in rows if (r["dataset"], r["structure"]) == s and r["method"] == method
                        and r["model"] == model) for s in structures]
        ax.bar(np.arange(len(structures)) + (n - len(series) / 2 + 0.5) * width, values, width,
               color=colors[list(METHODS).index(method)], hatch="///" if model == "mobilesam" else None,
               edgecolor="white" if model == "mobilesam" else None, label=f"{model}: {METHODS[method]}")
    ax.set_xticks(np.arange(len(structures)), [f"{s}\n({d})" for d, s in structures], fontsize=8)
    ax.set_ylabel("Dice (mean over cases)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-structure Dice (hatched = MobileSAM)")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_speed(speed_rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=80)
    for r in speed_rows:
        label = f"{r['procedure']} {r['model']}"
        a.plot([p["slices"] for p in r["slices"]], [p["seconds"] for p in r["slices"]], "o-", label=label)
        b.plot([p["size"] for p in r["inplane"]], [p["seconds"] / p["slices"] for p in r["inplane"]], "o-",
               label=label)
    a.set_xlabel("slices in the structure's box (128x128 phantom)")
    a.set_ylabel("seconds, one structure")
    a.set_title("time vs slice count")
    b.set_xlabel("in-plane size (pixels)")
    b.set_ylabel("seconds per slice")
    b.set_title("time vs volume size")
    for axis in (a, b):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_clicks(click_rows, budget, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=80)
    for dataset, model, start, mode in click_groups(click_rows):
        sel = [r["dices"] for r in click_rows if (r["dataset"], r["model"], r["start"], r["mode"]) ==
               (dataset, model, start, mode)]
        ax.plot(range(budget + 1), np.mean(sel, axis=0), "o-" if dataset == "colin27" else "s--",
                label=f"{dataset} {model} {'peer start' if start == 'reference' else 'localized start'} {mode}",
                markersize=3)
    ax.axhline(0.9, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("simulated clicks")
    ax.set_ylabel("mean Dice")
    ax.set_title("Interactive correction")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def montage_png(planes, rows, method, model, path: Path) -> list[str]:
    """Best / median / worst structure cases of one procedure: the axial slice through the truth's largest slice,
    cropped around the structure; prediction filled, truth outlined in white."""
    from MedFoundationSegLib.io.overlay import montage, overlay_slice, write_png

    sel = sorted((r for r in rows if r["method"] == method and r["model"] == model
                  and (r["case"], r["structure"], model, method) in planes), key=lambda r: r["dice"])
    if not sel:
        return []
    picks = [("worst", sel[0]), ("median", sel[len(sel) // 2]), ("best", sel[-1])]
    tiles, captions = [], []
    for tag, r in picks:
        plane = planes[(r["case"], r["structure"], model, method)]
        image = plane["image"]
        if r["dataset"] != "phantom":  # MRI: map the 1-99 percentile range onto the overlay's CT window
            lo, hi = plane["lo_hi"]
            image = -160 + 400 * (image - lo) / max(hi - lo, 1e-6)
        tile = overlay_slice(image, plane["pred"].astype(np.uint8), plane["truth"].astype(np.uint8))
        scale = max(1, int(160 / max(tile.shape[:2])))
        tiles.append(np.kron(tile, np.ones((scale, scale, 1), np.uint8)))
        captions.append(f"{tag}: {r['case']} {r['structure']} Dice {r['dice']:.3f} (axial slice {plane['k']})")
    write_png(montage([tiles]), path)
    return captions


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    memory = ""
    try:
        total_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                            if line.startswith("MemTotal")))
        memory = f", {total_kb / 1024 ** 2:.1f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs{memory}, load average at start {load[0]:.1f}; "
            f"{platform.platform()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (working tree has uncommitted changes to tracked files)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes-scale subset (see the module docstring)")
    parser.add_argument("--out", default=str(HERE), help="folder for report.md and report_files/")
    parser.add_argument("--skip-speed", action="store_true", help="no speed/memory section")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last run of this mode from its saved state: finished cases and a finished "
                             "speed section are kept, the rest is run, then the report is re-rendered")
    parser.add_argument("--redo-speed", action="store_true", help="with --resume: run the speed section again")
    parser.add_argument("--cases", type=int, default=None,
                        help="only the first N cases of each dataset (a timed partial run)")
    parser.add_argument("--state", default=None, help="state file (default: the data cache, one per mode)")
    parser.add_argument("--render-only", action="store_true",
                        help="with --resume: only re-render report.md and the PNGs from the saved state")
    parser.add_argument("--speed-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        print(json.dumps(speed_child(*json.loads(args.speed_child))))
        return

    from MedFoundationSegLib.core import weights
    from MedFoundationSegLib.localize.engines import localize

    mode = "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    command = "python benchmarks/run_benchmarks.py" + (" --quick" if args.quick else "") + \
        (f" --cases {args.cases}" if args.cases else "") + (" --skip-speed" if args.skip_speed else "") + \
        (f" --out {args.out}" if Path(args.out).resolve() != HERE else "")
    for model in cfg["models"]:
        weights.weights_path(model)  # clear MissingWeightsError naming the fetch command
    machine, commit = machine_description(), git_commit()
    started = time.perf_counter()
    medlam_path, medlam_status = weights.cached_status("medlam")
    medlam_note = "MedLAM weights " + medlam_status + " (rows run only when `medfoundationseg weights fetch " \
        "medlam` has cached them)"
    engines = ["registration"] + (["medlam"] if medlam_status.startswith("ok") else [])
    if "medlam" in engines:
        medlam_note = "see the medlam rows above"
    out = Path(args.out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)

    import pickle

    from public_data import data_dir

    state_path = Path(args.state) if args.state else data_dir() / f"benchmark_state_{mode}.pkl"
    state = dict(mode=mode, seg=[], clicks=[], loc=[], planes={}, done=[], case_seconds={}, speed=None,
                 speed_s=0.0, runs=[], units=[], boxes={})
    if args.resume and state_path.is_file():
        saved = pickle.loads(state_path.read_bytes())
        if not isinstance(saved, dict) or saved.get("mode") != mode:
            raise ValueError(f"{state_path} is not a saved {mode} run of this version; run without --resume")
        state = saved
    elif args.resume:
        log(f"--resume: no saved state at {state_path}; starting from the beginning")
    state["runs"].append(dict(command=command + (" --resume" if args.resume else ""), commit=commit, machine=machine,
                              date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())))

    def save_state():
        # this run's wall time and peak RSS so far, kept in its `runs` entry (a --render-only pass keeps them)
        state["runs"][-1].update(minutes=round((time.perf_counter() - started) / 60, 1),
                                 peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        state_path.parent.mkdir(parents=True, exist_ok=True)
        partial = state_path.with_name(state_path.name + ".part")
        partial.write_bytes(pickle.dumps(state))
        partial.replace(state_path)  # never a half-written state

    work = []
    for dataset, make_cases in (
            ("colin27", lambda: colin_cases(cfg["aal"], cfg["queries"])),
            ("phantom", lambda: phantom_cases(cfg["phantom_structures"], cfg["phantoms"], cfg["phantom_shape"]))):
        template_set, cases = make_cases()
        work.append([(dataset, template_set, case) for case in cases[:args.cases]])
    # a run stopped early (the state is saved after every case) should cover both datasets and as many cases as
    # possible: the first case of each dataset, then the cheap phantoms, then the other Colin27 queries
    order = [group[0] for group in work if group] + [item for group in work[::-1] for item in group[1:]]
    planned = [case for _, _, (case, _) in order]

    def render():
        render_report(state, cfg, mode, args.cases, planned, medlam_note, out)

    if args.render_only:  # the saved runs' entries, times included, are left as they are
        state["runs"].pop()
        render_report(state, cfg, mode, args.cases, planned, medlam_note, out)
        return

    for dataset, template_set, (case, make_case) in order:
        if case in state["done"]:
            continue
        t_case = time.perf_counter()
        image, labels, ids = make_case()
        for engine in engines:
            if engine != "registration" and (case, engine) not in state["units"]:  # MedLAM: localization rows
                boxes = localize(template_set, image, engine, structures=list(ids))
                state["loc"] += localization_rows(dataset, case, image, labels, ids, boxes, engine)
                state["units"].append((case, engine))
        state["case_seconds"][case] = state["case_seconds"].get(case, 0.0) + time.perf_counter() - t_case
        evaluate_case(dataset, case, image, labels, ids, template_set, cfg, "registration", state, save_state)
        state["done"].append(case)
        save_state()
        log(f"{case} took {state['case_seconds'][case]:.0f} s; saved {len(state['done'])} cases to {state_path}")
        render()
    if not args.skip_speed and (state["speed"] is None or args.redo_speed):  # last: it needs a quiet machine least
        t_speed = time.perf_counter()
        state["speed"] = speed(cfg)
        state["speed_s"] = time.perf_counter() - t_speed
    save_state()
    render()


def subset_text(setting) -> str:
    return ", ".join(f"{v} ({k})" for k, v in setting.items()) if isinstance(setting, dict) else \
        ("all" if setting >= 99 else str(setting))


def render_report(state, cfg, mode, cases_limit, planned, medlam_note, out: Path) -> None:
    """report.md + PNGs from the saved state; called after every case, so an interrupted run leaves a report."""
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    seg_rows, click_rows, loc_rows, planes = state["seg"], state["clicks"], state["loc"], state["planes"]
    accuracy_s = sum(state["case_seconds"].values())
    speed_rows = state["speed"] or []
    if seg_rows:
        plot_dice(seg_rows, files / "dice_per_structure.png")
    if click_rows:
        plot_clicks(click_rows, cfg["clicks"], files / "clicks.png")
    captions = {}
    for dataset in ("colin27", "phantom"):
        rows = [r for r in seg_rows if r["dataset"] == dataset]
        captions[dataset] = montage_png(planes, rows, "localized_refined", "litemedsam",
                                        files / f"montage_{dataset}.png")
    if speed_rows:
        plot_speed(speed_rows, files / "time_vs_slices.png")
    (files / "results.json").write_text(json.dumps(
        {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "segmentation": seg_rows,
         "clicks": click_rows, "localization": loc_rows, "speed": speed_rows}, indent=1, default=float))

    runs = state["runs"]
    run_lines = [f"- run {n + 1}: `{r['command']}` at commit {r['commit']}, {r['date']}; machine: {r['machine']}"
                 + (f"; took {r['minutes']:.1f} min, peak RSS of its main process {r['peak_rss_mb']:.0f} MB"
                    if "minutes" in r else "") for n, r in enumerate(runs)]
    missing = [case for case in planned if case not in state["done"]]
    partial = f" — partial: the first {cases_limit} case(s) of each dataset" if cases_limit else ""
    if missing:
        partial += f"; {len(missing)} of {len(planned)} planned cases not (yet) run: {', '.join(missing)}"
    lines = [f"# MedFoundationSeg benchmarks ({mode} run{partial})", "",
             "Made by the command(s) below, from the repository root with the dev interpreter; a `--resume` run "
             "continues the saved state of the one before it (finished cases are not redone).", ""] + run_lines + [
             f"- compute time: accuracy/clicks/localization {accuracy_s / 60:.1f} min over {len(state['done'])} "
             f"cases (sum over runs), speed/memory {state['speed_s'] / 60:.1f} min",
             f"- cases done: {', '.join(state['done']) or 'none'}" + "".join(
                 f"; {case} in progress: {sum(1 for u in state['units'] if u[0] == case and len(u) == 3)} "
                 "structure×model units" for case in dict.fromkeys(u[0] for u in state["units"])
                 if case not in state["done"]), "",
             "## What was run", "",
             f"- **colin27**: Colin27 T1 (ch2) + AAL from Debian `mricron-data`. The original is the template; "
             f"{cfg['queries']} deformed copies (random affine ±8°/±8 %/±10 mm + B-spline elastic ≤4 mm, labels "
             f"warped along; smooth multiplicative bias ±15 %; Gaussian noise 3 % of max) are the queries. "
             f"Structures: {', '.join(cfg['aal'])}.",
             f"- **phantom**: CT phantoms (HU) seeds 101..{100 + cfg['phantoms']} at {cfg['phantom_shape']} (z,y,x); "
             f"template seed 100. Structures: {', '.join(cfg['phantom_structures'])}.",
             "- Models: LiteMedSAM on every structure; MobileSAM on the first "
             f"{subset_text(cfg['mobilesam_structures'])} structures of each case (in the order listed); simulated "
             f"clicks on the first {subset_text(cfg['click_structures'])} (subsets so that the full run fits about "
             "two hours on a 2-core CPU).",
             "- Localization: registration engine (template → query), boxes from the warped template extreme points. "
             f"MedLAM: {medlam_note}.",
             "- Segmentation is axial, pipeline defaults (window auto; localized boxes padded by 5 mm, GT boxes not "
             "padded, as the peer gets them). GT box = the warped label's 3D bounding box. Seed slice = the truth drawn on its largest axial slice, then propagated with the "
             "stop rules (no z-range given). Refinement = 3D constrained graph cut on a crop (the pipeline's default). "
             "Peer reference = the LiteMedSAM CVPR-24 3D procedure from the GT box, run on the same cached "
             "embeddings for accuracy; its speed is measured separately with its own fp32, batch-1, cache-less "
             "predictor.",
             "- Metrics: Dice; HD95 = 95th percentile of the pooled symmetric surface distances in mm (medpy "
             "definition; empty predictions give n/a and are counted in `empty`); ASSD = mean of the same distances; "
             "end-slice error = slices between the predicted and true first/last axial slice (absolute, mean). "
             "`s per structure` = wall time of that row's call; calls on one volume share its slice embeddings, so "
             "the first call per model and volume (GT box of the first structure) pays for encoding its slices and "
             "later calls only for slices not yet encoded.", ""]
    for dataset in ("colin27", "phantom"):
        lines += [f"## Accuracy: {dataset}", ""] + accuracy_table(seg_rows, dataset) + ["", "Per-structure Dice:",
                                                                                      ""]
        lines += per_structure_table(seg_rows, dataset) + [""]
    lines += ["![per-structure Dice](report_files/dice_per_structure.png)", "",
              "Overlays (LiteMedSAM, localized box + refinement; prediction filled, truth outlined in white): ", ""]
    for dataset, caps in captions.items():
        if not caps:
            continue
        lines += [f"![{dataset} worst / median / best](report_files/montage_{dataset}.png)", "",
                  f"{dataset}, left to right: " + "; ".join(caps), ""]
    lines += ["## Interactive correction (simulated clicks)", "",
              f"Starts: the raw model result from the localized box (models: {', '.join(cfg['click_models'])}) and "
              "the peer reference result from the GT box (LiteMedSAM). Each click goes to the centre (maximum "
              "distance transform, mm) of the largest 26-connected 3D error component, positive on a miss, negative "
              "on a false positive, placed on the errors of the mask the user sees: click 0 is the start after the "
              "graph cut with its box and no click (so the gains after it are the clicks' own); up to "
              f"{cfg['clicks']} clicks, and every click so far is kept in each re-solve. Click handling: "
              "**graphcut** = the plugin's Refine: the 3D constrained graph cut re-solved from the start's model "
              "probability with the box and every click as a hard disk (radius 2 voxels, in-plane); **reprompt** = "
              "each clicked slice is first re-segmented by the model with the box and that slice's clicks as point "
              "prompts (its probability replaced), then the same graph cut. NoC@t = clicks until Dice ≥ t (0 if the "
              f"start already reaches it), {cfg['clicks']} when never reached (failures counted as {cfg['clicks']}).",
              ""]
    lines += click_table(click_rows, cfg["clicks"]) + ["", "![Dice vs clicks](report_files/clicks.png)", ""]
    lines += ["## Localization", "", "Box IoU on inclusive voxel boxes (continuous extents, as MedLAM reports); wall "
              "distance = mean absolute distance of the 6 box walls (mm); extreme-point error = mean distance of the "
              "6 extreme points (mm).", ""] + localization_table(loc_rows, medlam_note) + [""]
    if not speed_rows:
        lines += ["## Speed and memory", "", "Not run yet in this run (it runs after the cases); "
                  "`python benchmarks/run_benchmarks.py --resume` adds it.", ""]
    if speed_rows:
        lines += ["## Speed and memory", "",
                  "One phantom structure (liver, seed 3) from its box over the given number of axial slices, each "
                  "procedure's timing interleaved with the others in one child process (after a 2-slice warm-up of "
                  f"each; median of {cfg['speed_reps']} repeat(s), alternating the order), so ratios are fair on a "
                  "shared machine even when absolute seconds are not. Each timed point builds its predictor afresh "
                  "(model load from the cache included, as on a user's first call); the fit below separates that "
                  "fixed cost (intercept) from the marginal cost per slice (slope). Peak RSS: a separate child per "
                  "procedure runs the largest slice count; the peak resident set (VmHWM) is reset after the phantom "
                  "is built, so it counts the model, the predictor and the segmentation. optimized = pipeline "
                  "`segment_box` (its default `box_guided` mode, embedding cache, BN-folded channels-last encoder, precision `auto`: bf16 only "
                  "on CPUs with native bf16, else fp32); reference = the peer LiteMedSAM 3D procedure with a fp32, "
                  "batch-1, cache-less predictor.", ""] + speed_table(speed_rows) + [""] + speed_fits(speed_rows) + [
                  "", "![time vs slices and size](report_files/time_vs_slices.png)", ""]
    full = CONFIGS["full"]
    lines += ["## Full mode", "", f"`python benchmarks/run_benchmarks.py` runs {len(full['aal'])} AAL structures × "
              f"{full['queries']} deformed queries, {full['phantoms']} phantoms at {full['phantom_shape']} with "
              f"{', '.join(full['phantom_structures'])}, LiteMedSAM on every structure and MobileSAM on the first "
              f"{subset_text(full['mobilesam_structures'])}, simulated clicks ({', '.join(full['click_modes'])}) for "
              f"{', '.join(full['click_models'])} on the first {subset_text(full['click_structures'])}, and the "
              f"speed sweep over {full['slice_counts']} slices and {full['inplane']} px in-plane. It took 110 min on "
              "an idle-to-lightly-shared 2-core AVX2 CPU (2026-12-02); `--resume` continues an interrupted run from "
              "its saved state.", ""]
    (out / "report.md").write_text("\n".join(lines))
    log(f"wrote {out / 'report.md'}")


if __name__ == "__main__":
    main()
