"""``medfoundationseg demo``: the whole job on built-in data, as a user would do it.

A template phantom gets its organs' 6 extreme points "clicked" (taken from its labels, as a careful user would
place them); a few other phantoms (different subjects: size, shape, position, slice spacing) are then localized,
segmented with the built-in LiteMedSAM, refined and written out. Prints Dice per organ and saves an overlay montage.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DEMO_STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right")


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="localize + segment + refine phantoms end to end and report Dice")
    parser.add_argument("--out", default="demo_output", help="output folder (default: ./demo_output)")
    parser.add_argument("--queries", type=int, default=2, help="number of query phantoms (default 2)")
    parser.add_argument("--shape", default="48,160,160", help="phantom size z,y,x in voxels")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--refine", default="graphcut", choices=("graphcut", "geodesic", "growcut", "none"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run")
    parser.set_defaults(func=run)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def run(args) -> int:
    from MedLAMLocalizeLib.templates import Template, TemplateSet, structure_points_from_mask

    from . import overlay, pipeline
    from .phantoms import make_phantom
    from .volume import write_volume

    out = Path(args.out)
    if (out / "demo_report.txt").exists() and not args.overwrite:
        print(f"{out} holds an earlier demo run; pass --overwrite to replace it (or --out another folder)",
              file=sys.stderr)
        return 2
    shape = tuple(int(v) for v in args.shape.split(","))
    started = time.perf_counter()
    template_ph = make_phantom(100, shape)
    points = {name: structure_points_from_mask(template_ph.labels, template_ph.labels.array == template_ph.label_ids[name])
              for name in DEMO_STRUCTURES}
    template = Template.from_volumes("template", template_ph.image, points_lps=points)
    template.image_path = write_volume(template_ph.image, out / "template.nrrd", overwrite=True)
    TemplateSet([template]).save(out / "templates.yaml")
    print(f"template phantom: 6 extreme points clicked for {', '.join(DEMO_STRUCTURES)} -> {out / 'templates.yaml'}")

    session = pipeline.Session()
    options = pipeline.CaseOptions(model=args.model, refine=args.refine, device=args.device, padding_mm=3.0)
    rows, tiles = [], []
    for q in range(args.queries):
        query = make_phantom(101 + q, shape)
        name = f"query{q + 1:02d}"
        write_volume(query.image, out / name / "image.nrrd", overwrite=True)
        write_volume(query.labels, out / name / "truth_labels.nii.gz", overwrite=True)
        t0 = time.perf_counter()
        report = session.run_case(TemplateSet([template]), query.image, out / name, options=options,
                                  overwrite=True)
        seconds = time.perf_counter() - t0
        predicted = report["labels_kji"]
        scores = {}
        for structure in DEMO_STRUCTURES:
            entry = report["structures"][structure]
            truth = query.labels.array == query.label_ids[structure]
            scores[structure] = dice(predicted == entry["label"], truth) if entry.get("present") else 0.0
        rows.append((name, scores, seconds, report["localizer"]["engine"]))
        print(f"{name}: " + "  ".join(f"{s} {d:.3f}" for s, d in scores.items()) + f"  ({seconds:.0f} s)")
        truth_ids = np.zeros_like(predicted)
        for structure in DEMO_STRUCTURES:
            entry = report["structures"][structure]
            truth_ids[query.labels.array == query.label_ids[structure]] = entry.get("label", 0)
        tiles.append(overlay.case_tiles(query.image.array, predicted, truth_ids, query.image.spacing_mm,
                                        [report["structures"][s]["label"] for s in DEMO_STRUCTURES
                                         if report["structures"][s].get("present")] or [1]))
    png = overlay.write_png(overlay.montage(tiles), out / "overlay_montage.png")
    means = {s: float(np.mean([r[1][s] for r in rows])) for s in DEMO_STRUCTURES}
    lines = [f"MedFoundationSeg demo: {args.queries} query phantoms, model {args.model}, refine {args.refine}, "
             f"localizer {rows[0][3]}",
             "mean Dice per organ: " + "  ".join(f"{s} {d:.3f}" for s, d in means.items()),
             f"mean Dice over organs: {np.mean(list(means.values())):.3f}",
             f"outputs: {out}/query*/segmentation.seg.nrrd, labels.nii.gz, report.json; overlay: {png}",
             f"total time: {time.perf_counter() - started:.0f} s"]
    (out / "demo_report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
