"""Learning across a dataset: clicks to reach Dice 0.85 on the 1st vs the last volume of a sequence, per structure.

Per structure, the CT phantoms 101, 102, ... are annotated in order, as a user would work through a dataset: the
CVPR 2025 protocol box (middle-slice 2D box + z-range), segmented as the panel segments a drawn box
(bench_interactive.INITIALS); the first segmentation starts from the head stored by the
earlier volumes (none on the 1st); simulated clicks (click_sim.py) until Dice >= 0.85 or 10 clicks, each corrected
by Session.correct with the same prior; the mask reached then (what the user signs) teaches the head that the next
volume starts from (Session.learn_signed, kept in a HeadStore in a temporary folder, as the panel keeps it beside the
template set; where the head cannot reproduce the signed mask, the earlier head's weights or only the shape are
stored). Arm ``fresh`` runs the same volumes without any stored head (learning within each volume only).

Prints per structure and volume the Dice of the first segmentation, the clicks to 0.85 and the final Dice, then per
arm the mean clicks and first Dice on each volume of the sequence.

``--starts 0 1 ... 9 --pool 10`` runs one sequence from each of the 10 phantoms, wrapping around: each phantom is
then once the 1st and once the 6th volume of a sequence, so the volumes' own difficulty cancels out of 1st against
6th, and each structure-volume is seen both fresh and after five others.

    python benchmarks/bench_head_sequence.py [--model litemedsam] [--volumes 6] [--reverse] [--starts N ...]
        [--pool 10] [--json rows.json]
    python benchmarks/bench_head_sequence.py --summary rows.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import INITIALS, protocol_box_ijk  # noqa: E402
from click_sim import next_click  # noqa: E402
from MedFoundationSegLib.io.head_store import HeadStore  # noqa: E402
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision  # noqa: E402
from MedFoundationSegLib.segment.structure_head import StructureHead  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import PHANTOM_FULL, machine_description, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402

TARGET = 0.85
BUDGET = 10


def annotate(session: Session, image, truth, model: str, prior: StructureHead | None) -> dict:
    """One structure in one volume: first segmentation, then clicks until Dice >= TARGET; the signed mask."""
    box_ijk = protocol_box_ijk(truth)
    # The graph cut inside segment_box, as the panel's request runs it (LiteMedSAM's first cut is shifted there).
    shown = session.segment_box(image, box_ijk, model=model, padding_mm=0.0, refine="graphcut", prior_head=prior,
                                **INITIALS["panel"])
    dices, clicks = [dice(shown.mask_kji, truth)], []
    while dices[-1] < TARGET and len(clicks) < BUDGET:
        click = next_click(shown.mask_kji, truth, tuple(image.spacing_mm[::-1]))
        if click is None:
            break
        clicks.append(click)
        shown = session.correct(image, shown, box_ijk, clicks, model=model, refine="graphcut", prior_head=prior)
        dices.append(dice(shown.mask_kji, truth))
    reached = len(clicks) if dices[-1] >= TARGET else BUDGET
    return dict(dices=dices, clicks_to_target=reached, signed=shown.mask_kji, box_ijk=box_ijk)


def run_sequence(args, start: int) -> list[dict]:
    """One sequence of ``args.volumes`` phantoms from ``start`` of the pool, with its own empty head store."""
    pool = phantom_cases(tuple(args.structures), max(args.pool, args.volumes), (48, 128, 128))[1]
    cases = (pool[start:] + pool[:start])[:args.volumes]
    if args.reverse:
        cases = cases[::-1]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = HeadStore(folder)
        for position, (case, make) in enumerate(cases, start=1):
            image, labels, ids = make()
            session = Session(max_predictors=2)  # the segmenting model and the one asked on clicked slices
            for name in args.structures:
                truth = labels.array == ids[name]
                if not truth.any():
                    continue
                for arm in args.arms:
                    stored = store.load(name, args.model) if arm == "stored" else None
                    prior = StructureHead.from_arrays(stored) if stored is not None else None
                    run = annotate(session, image, truth, args.model, prior)
                    if arm == "stored":
                        head = session.learn_signed(image, run["signed"], run["box_ijk"], model=args.model,
                                                    prior_head=prior, adapt_decoder=args.adapt_decoder)
                        store.save(name, args.model, head.to_arrays())
                    row = dict(case=case, start=start, position=position, structure=name, arm=arm,
                               dices=run["dices"], clicks_to_target=run["clicks_to_target"],
                               prior_volumes=prior.volumes if prior else 0,
                               prior_shape_volumes=prior.shape_volumes if prior else 0)
                    rows.append(row)
                    print(f"{case:<12}{name:<14}{arm:<7} volume {position} (prior of {row['prior_volumes']}, shape of "
                          f"{row['prior_shape_volumes']}) first "
                          f"{run['dices'][0]:.3f} clicks to {TARGET} {run['clicks_to_target']:>2} final "
                          f"{run['dices'][-1]:.3f}", flush=True)
    return rows


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per arm: mean clicks and first Dice on each volume of the sequences, then the clicks on their last volumes
    against their 1st and, where a structure-volume was both, the same ones as 1st and as last (printed, and
    returned as ``{arm: {"first": clicks, "last": clicks, "same": (as 1st, as last)}}``)."""
    volumes = max(r["position"] for r in rows)
    figures = {}
    for arm in sorted({r["arm"] for r in rows}):
        chosen = [r for r in rows if r["arm"] == arm]
        per_volume = [[r for r in chosen if r["position"] == p] for p in range(1, volumes + 1)]
        print(f"{arm:<7} mean clicks to {TARGET} by volume: " +
              " ".join(f"{np.mean([r['clicks_to_target'] for r in v]):.1f}" for v in per_volume if v) +
              "  first Dice by volume: " +
              " ".join(f"{np.mean([r['dices'][0] for r in v]):.3f}" for v in per_volume if v))
        first, last = per_volume[0], per_volume[-1]
        clicks_first, clicks_last = (sum(r["clicks_to_target"] for r in v) for v in (first, last))
        print(f"{arm:<7} clicks on the {len(first)} runs of a 1st volume {clicks_first}, on the {len(last)} of a "
              f"{volumes}th {clicks_last}: {clicks_last / max(clicks_first, 1):.0%}")
        as_first = {(r["case"], r["structure"]): r["clicks_to_target"] for r in first}
        same = [(as_first[(r["case"], r["structure"])], r["clicks_to_target"]) for r in last
                if (r["case"], r["structure"]) in as_first]
        before, after = (sum(pair[n] for pair in same) for n in (0, 1))
        if same:
            print(f"{arm:<7} the same {len(same)} structure-volumes as 1st and as {volumes}th: {before} -> {after} "
                  f"clicks ({after / max(before, 1):.0%})")
        figures[arm] = {"first": clicks_first, "last": clicks_last, "same": (before, after)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--structures", nargs="+", default=list(PHANTOM_FULL))
    parser.add_argument("--arms", nargs="+", default=["stored", "fresh"])
    parser.add_argument("--reverse", action="store_true",
                        help="annotate the volumes last to first (with a forward run, every volume is once the 1st "
                             "and once the last of a sequence, so their difficulty cancels out of 1st vs last)")
    parser.add_argument("--starts", type=int, nargs="+", default=[0],
                        help="one sequence from each phantom 101 + START of the pool")
    parser.add_argument("--pool", type=int, default=0, help="phantoms the sequences wrap around (default: --volumes)")
    parser.add_argument("--adapt-decoder", action="store_true",
                        help="signed masks also adapt the decoder's output layers (Session.learn_signed)")
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--summary", type=Path, nargs="+",
                        help="print the summary of rows written before (--json files) and run nothing")
    args = parser.parse_args()
    if args.summary:
        summary([row for path in args.summary for row in json.loads(path.read_text())])
        return
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}; model {args.model}", flush=True)
    rows = []
    for start in args.starts:
        rows += run_sequence(args, start)
        if args.json:
            args.json.write_text(json.dumps(rows))
    print()
    summary(rows)


if __name__ == "__main__":
    main()
