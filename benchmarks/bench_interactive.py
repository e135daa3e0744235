"""Interactive correction in the protocol of the CVPR 2025 interactive 3D segmentation challenge.

Per structure: the initial prompt is the ground truth's 2D box on its middle slice plus its slice range (z-range);
then corrective clicks, each at the centre of the largest remaining 3D error component (positive where the structure
is missed, negative where the mask is wrong; benchmarks/click_sim.py), with Dice after every step. Up to 10 clicks
are simulated so NoC@85/NoC@90 can be counted (after the 5th, a structure at Dice >= 0.90 gets no more clicks);
the protocol's figures are those after 5.

Procedures (``--procedures``):
- ``correct``: Session.correct, the engine's click action: the clicked slice re-prompted with the box, its clicks
  and the shown mask, on thin slices the correction spread outwards while it changes something (segment/clicks.py),
  a structure head learned from the shown mask and the clicks predicting the box's slices
  (segment/head_learning.py), then a 3D graph cut holding every click.
- ``no_learn``: ``correct`` without the structure head (the click action before it learned).
- ``monotone``: ``correct`` whose clicked slice, too, only gains (include click) or loses (exclude click) voxels;
  ``no_mask_prompt``: ``correct`` without the shown mask as the mask prompt.
- ``walk0`` / ``walk4``: ``correct`` whose walk re-prompts no slice / at most 4 slices each way beyond the clicked one,
  whatever the slice thickness (the default is ``workflow.session.WALK_SLICES``: none on thick slices).
- ``graphcut``: the graph cut alone with every click as a hard seed (the Refine action before clicks re-prompted).
- ``panel``: the engine's requests as the panel sends them (``workflow.actions.run_request``): a ``segment_box``
  request for the initial segmentation, then per click a ``refine`` request with the segment shown and every click
  so far; the engine finds the model's probability behind the segment and the box it was made in in its
  ``EvidenceStore``.
- ``panel_bare``: ``panel`` with the segment alone as the evidence (``Session.refine`` without the probability),
  corrected in the segment's own box (``workflow.fusion.segment_box_ijk``), as the engine answered before it kept
  them.

The initial segmentation is the panel's for a box the user drew (``INITIALS["panel"]``: box-guided propagation
whose z-range is taken as the structure's, ``Options.exact_range``); ``--initial guided`` gives the one the figures
before it used (propagation from the middle slice with the seed stop rules, which may stop inside the z-range).

Prints per structure the Dice after each step, seconds per interaction, and the summary per dataset, model and
procedure: mean Dice per step, final Dice (5 clicks), area under the Dice-vs-click curve (mean of the 6 values, 0-5
clicks), NoC@85 and NoC@90 (10 clicks; not reached = 10), share of structures with NoC@85 <= 5, how often one
click lowered Dice by more than 0.01, and seconds per click: all clicks, and those that encoded no new slice (the
issue's "once the slices are encoded").

    python benchmarks/bench_interactive.py [--colin-structures 12] [--colin-queries 2] [--phantoms 10]
        [--models litemedsam mobilesam] [--procedures correct graphcut] [--click-reach-mm MM]
        [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from click_sim import next_click, noc  # noqa: E402
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision, select_device  # noqa: E402
from MedFoundationSegLib.workflow.actions import EngineRequest, run_request  # noqa: E402
from MedFoundationSegLib.workflow.options import Options  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, machine_description, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402

PROTOCOL_CLICKS = 5
# Session.correct variants (keyword arguments of segment.clicks.correct_with_clicks)
TUNINGS = {"correct": {}, "no_learn": {}, "monotone": {"monotone_clicked_slice": True},
           "no_mask_prompt": {"use_mask_prompt": False}, "walk0": {"max_spread_slices": 0},
           "walk4": {"max_spread_slices": 4}}
LEARN = {"no_learn": False}  # Options.learn per procedure (default: on)
INITIALS = {"panel": {"mode": "box_guided", "exact_range": True}, "guided": {"mode": "guided"}}


def protocol_box_ijk(truth_kji: np.ndarray) -> np.ndarray:
    """The challenge's initial prompt as a 3D box: the 2D box of the middle slice of the z-range, over the z-range."""
    slices = np.flatnonzero(truth_kji.any(axis=(1, 2)))
    k0, k1 = int(slices[0]), int(slices[-1])
    middle = truth_kji[(k0 + k1) // 2]
    if not middle.any():  # a structure in two parts along z: the nearest filled slice to the middle
        middle = truth_kji[int(slices[np.argmin(np.abs(slices - (k0 + k1) // 2))])]
    rows, cols = np.flatnonzero(middle.any(axis=1)), np.flatnonzero(middle.any(axis=0))
    return np.array([[cols[0], rows[0], k0], [cols[-1], rows[-1], k1]])


def drain_idle_work(session: Session) -> float:
    """Run the work the engine does while the user looks at a result (``Session.idle_work``, as the engine's worker
    does between requests); returns its seconds."""
    start = time.perf_counter()
    while (task := session.idle_work.next()) is not None:
        task(lambda: False)
    return time.perf_counter() - start


def run_structure(session: Session, image, truth: np.ndarray, model: str, procedure: str, budget: int,
                  initial: str = "panel", click_reach_mm: float | None = None, idle_work: bool = False) -> dict:
    box_ijk = protocol_box_ijk(truth)
    start = time.perf_counter()
    if procedure == "panel":
        request = EngineRequest("segment_box", image, Options(model=model, padding_mm=0.0, refine="graphcut",
                                                              **INITIALS[initial]), {"box_ijk": box_ijk.tolist()})
        first = shown = run_request(session, request).case_result()
    else:  # the graph cut inside segment_box, as the panel's request runs it
        first = shown = session.segment_box(image, box_ijk, model=model, padding_mm=0.0, refine="graphcut",
                                            **INITIALS[initial])
    initial_s = time.perf_counter() - start
    spacing_kji = tuple(image.spacing_mm[::-1])
    dices, seconds, encoded, clicks, idle_s = [dice(shown.mask_kji, truth)], [], [], [], []
    for step in range(budget):
        if idle_work:  # the user looks at the result before the next click
            idle_s.append(drain_idle_work(session))
        click = next_click(shown.mask_kji, truth, spacing_kji)
        if click is None or (step >= PROTOCOL_CLICKS and dices[-1] >= 0.90):  # nothing left that NoC could count
            dices.append(dices[-1])
            continue
        clicks.append(click)
        encoded_before = session.slices_encoded()
        t0 = time.perf_counter()
        if procedure in TUNINGS:
            shown = session.correct(image, shown, box_ijk, clicks, model=model, refine="graphcut",
                                    learn=LEARN.get(procedure, True), tuning=TUNINGS[procedure],
                                    click_reach_mm=click_reach_mm)
        elif procedure == "panel":  # as the panel's Refine sends it: the segment shown and every click so far
            params = {"positive_ijk": clicks_ijk(clicks, True), "negative_ijk": clicks_ijk(clicks, False)}
            request = EngineRequest("refine", image, Options(model=model, refine="graphcut",
                                                             click_reach_mm=click_reach_mm), params,
                                    {"mask_kji": shown.mask_kji})
            shown = run_request(session, request).case_result()
        else:
            points = {"positive_ijk": clicks_ijk(clicks, True), "negative_ijk": clicks_ijk(clicks, False)}
            points = {key: np.array(chosen, float) if chosen else None for key, chosen in points.items()}
            if procedure == "panel_bare":  # the segment shown is the only evidence
                shown = session.refine(image, shown.mask_kji, model=model, refine="graphcut",
                                       click_reach_mm=click_reach_mm, **points)
            else:
                refined = session.refine_result(image, first, method="graphcut", box_ijk=box_ijk,
                                                click_reach_mm=click_reach_mm, **points)
                shown = type(first)(refined.mask_kji, first.probability_kji, refined.report)
        seconds.append(time.perf_counter() - t0)
        encoded.append(session.slices_encoded() - encoded_before)
        dices.append(dice(shown.mask_kji, truth))
    return dict(dices=dices, seconds=seconds, encoded=encoded, initial_s=initial_s, idle_s=idle_s, initial=initial,
                click_reach_mm=click_reach_mm,
                clicks=[[list(c), p] for c, p in clicks], slices=int(box_ijk[1][2] - box_ijk[0][2] + 1))


def clicks_ijk(clicks: list, positive: bool) -> list[list[int]]:
    """The (i, j, k) points of the include (``positive``) or exclude clicks among ((k, j, i), positive) clicks."""
    return [list(point[::-1]) for point, is_positive in clicks if is_positive == positive]


def summary(rows: list[dict]) -> str:
    dices = np.array([row["dices"] for row in rows])
    steps = dices[:, :PROTOCOL_CLICKS + 1]
    drops = np.diff(dices, axis=1)
    noc85 = [noc(list(d), 0.85, dices.shape[1] - 1) for d in dices]
    noc90 = [noc(list(d), 0.90, dices.shape[1] - 1) for d in dices]
    per_click = [s for row in rows for s in row["seconds"]]
    encoded = [(s, n) for row in rows if "encoded" in row for s, n in zip(row["seconds"], row["encoded"])]
    warm = [s for s, n in encoded if n == 0]
    warm_text = (f"; once encoded ({len(warm)}/{len(encoded)} clicks) mean {np.mean(warm):.2f} max {np.max(warm):.2f}"
                 if warm else "")
    return (f"n={len(rows)}  Dice by click {' '.join(f'{v:.3f}' for v in steps.mean(axis=0))}  "
            f"final(5) {steps[:, -1].mean():.3f}  AUC {steps.mean():.3f}  NoC@85 {np.mean(noc85):.1f}  "
            f"NoC@90 {np.mean(noc90):.1f}  NoC@85<=5 {np.mean(np.array(noc85) <= 5):.0%}  "
            f"clicks that lowered Dice >0.01: {int((drops < -0.01).sum())}/{drops.size}  "
            f"s/click mean {np.mean(per_click):.2f} max {np.max(per_click):.2f}{warm_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--colin-structures", type=int, default=12)
    parser.add_argument("--colin-queries", type=int, default=2)
    parser.add_argument("--phantoms", type=int, default=10)
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=[48, 128, 128])
    parser.add_argument("--models", nargs="+", default=["litemedsam", "mobilesam"])
    parser.add_argument("--procedures", nargs="+", default=["correct", "graphcut"])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--initial", choices=sorted(INITIALS), default="panel",
                        help="the initial segmentation: the panel's for a drawn box, or the earlier 'guided'")
    parser.add_argument("--click-reach-mm", type=float, default=None,
                        help="how far a click pulls the probability in the graph cut after it (Options.click_reach_mm; "
                             "default: by the slice thickness)")
    parser.add_argument("--idle-work", action="store_true",
                        help="before each click, run the work the engine does while the user looks at the result "
                             "(Session.idle_work: the click model's box slices); its seconds are the rows' idle_s")
    parser.add_argument("--json", type=Path, help="also write every row here (and resume from it)")
    parser.add_argument("--summary-only", action="store_true", help="print the summary of the rows in --json")
    args = parser.parse_args()
    if args.summary_only:
        print_summaries(json.loads(args.json.read_text()), args.models, args.procedures)
        return
    device = select_device("auto")  # the Session's default (Options.device "auto")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads, encoder on {device}{gpu} in "
          f"{resolve_precision('auto', device)}", flush=True)
    rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    done = {(r["case"], r["structure"], r["model"], r["procedure"]) for r in rows}
    datasets = []
    if args.colin_structures and args.colin_queries:
        datasets.append(("colin27", colin_cases(AAL_FULL[:args.colin_structures], args.colin_queries)[1]))
    if args.phantoms:
        datasets.append(("phantom", phantom_cases(PHANTOM_FULL, args.phantoms, tuple(args.phantom_shape))[1]))
    for dataset, cases in datasets:
        for case, make in cases:
            image = labels = ids = None
            session = Session(max_predictors=2)
            for model in args.models:
                for procedure in args.procedures:
                    if image is None:
                        image, labels, ids = make()
                    for name, label in ids.items():
                        if (case, name, model, procedure) in done:
                            continue
                        truth = labels.array == label
                        if not truth.any():
                            continue
                        row = dict(run_structure(session, image, truth, model, procedure, args.clicks,
                                                 args.initial, args.click_reach_mm, args.idle_work),
                                   dataset=dataset, case=case, structure=name, model=model, procedure=procedure)
                        rows.append(row)
                        print(f"{case:<12}{name:<16}{model:<11}{procedure:<9} " +
                              " ".join(f"{d:.3f}" for d in row["dices"]) +
                              f"  s/click {np.mean(row['seconds']):.2f} (max {np.max(row['seconds']):.2f}, "
                              f"{row['slices']} slices)", flush=True)
                        if args.json:
                            args.json.write_text(json.dumps(rows))
    print()
    print_summaries(rows, args.models, args.procedures)


def print_summaries(rows: list[dict], models, procedures) -> None:
    for dataset in ("colin27", "phantom"):
        for model in models:
            for procedure in procedures:
                chosen = [r for r in rows if (r["dataset"], r["model"], r["procedure"]) == (dataset, model, procedure)]
                if chosen:
                    print(f"{dataset:<8}{model:<11}{procedure:<9} {summary(chosen)}")


if __name__ == "__main__":
    main()
