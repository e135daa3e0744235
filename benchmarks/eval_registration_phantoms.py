"""Registration localizer across independent phantom subjects: per-organ box IoU, wall and extreme-point error.

    python benchmarks/eval_registration_phantoms.py [--queries 10] [--templates 100] [--variant NAME key=value ...]
        [--png DIR]

Same set-up as ``bench_pipeline.py accuracy``: template = phantom seed 100 (64x192x192, its labels give the extreme
points of the large organs), queries = seeds 101.. . Each ``--variant`` is a RegistrationConfig with the given field
overrides (values parsed as Python literals), all run on the same phantoms in one process so their timings compare.
The "unregistered" row is the template's box taken as is (the floor any localizer must beat). Not part of the tests.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

LARGE_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


def parse_variant(text: str):
    """'name key=value key=value' -> (name, {field: value}); unknown fields are named in the error."""
    from MedFoundationSegLib.localize.registration import RegistrationConfig

    name, *pairs = text.split()
    fields = {f.name for f in dataclasses.fields(RegistrationConfig)}
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"variant {name!r}: RegistrationConfig has no field {key!r}; fields: {sorted(fields)}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def organ_errors(points_pred_lps: np.ndarray | None, points_true_lps: np.ndarray) -> dict:
    """IoU, mean wall distance and mean extreme-point distance of one organ (IoU 0, distances NaN when absent)."""
    from MedFoundationSegLib.core.boxes import lps_box_from_extreme_points
    from MedFoundationSegLib.sampledata.metrics import box_iou_mm, extreme_point_distance_mm, wall_distance_mm

    if points_pred_lps is None:
        return {"iou": 0.0, "wall_mm": np.nan, "point_mm": np.nan}
    pred, true = lps_box_from_extreme_points(points_pred_lps), lps_box_from_extreme_points(points_true_lps)
    return {"iou": box_iou_mm(pred, true), "wall_mm": wall_distance_mm(pred, true),
            "point_mm": float(extreme_point_distance_mm(points_pred_lps, points_true_lps).mean())}


def overlay_png(path: Path, query, truth_points: dict, predicted_points: dict, title: str) -> None:
    """Axial and coronal mid-slices of the query with the true (green) and predicted (red) boxes of each organ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from MedFoundationSegLib.core.boxes import lps_box_from_extreme_points

    image = query.image
    inv = np.linalg.inv(image.ijk_to_lps)

    def to_ijk(points):
        return np.asarray(points) @ inv[:3, :3].T + inv[:3, 3]

    liver = to_ijk(lps_box_from_extreme_points(truth_points["liver"])).mean(axis=0)
    k, j = int(round(liver[2])), int(round(liver[1]))
    figure, axes = plt.subplots(1, 2, figsize=(12, 6))
    axes[0].imshow(image.array[k], cmap="gray", vmin=-200, vmax=300)
    axes[1].imshow(image.array[:, j, :], cmap="gray", vmin=-200, vmax=300, origin="lower",
                   aspect=image.spacing_mm[2] / image.spacing_mm[0])
    for organ, points in truth_points.items():
        for colour, source in (("lime", points), ("red", predicted_points.get(organ))):
            if source is None:
                continue
            lo, hi = np.sort(to_ijk(lps_box_from_extreme_points(source)), axis=0)
            axes[0].add_patch(Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, ec=colour, lw=1))
            axes[1].add_patch(Rectangle((lo[0], lo[2]), hi[0] - lo[0], hi[2] - lo[2], fill=False, ec=colour, lw=1))
        axes[0].text(*to_ijk(lps_box_from_extreme_points(points)).mean(axis=0)[:2], organ, color="yellow", fontsize=7)
    axes[0].set_title(f"axial k={k} (green truth, red localized)")
    axes[1].set_title(f"coronal j={j}")
    figure.suptitle(title)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--first-query", type=int, default=101)
    parser.add_argument("--templates", default="100", help="comma-separated template phantom seeds (median-combined)")
    parser.add_argument("--shape", default="64,192,192")
    parser.add_argument("--variant", action="append", default=[],
                        help="'NAME key=value ...' RegistrationConfig overrides; repeatable (default: 'default')")
    parser.add_argument("--png", type=Path, help="write an overlay PNG per query and variant into this folder")
    args = parser.parse_args(argv)

    from MedFoundationSegLib.localize.registration import RegistrationConfig, localize_registration
    from MedFoundationSegLib.localize.templates import TemplateSet
    from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom

    shape = tuple(int(v) for v in args.shape.split(","))
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    configs = {name: RegistrationConfig(**overrides) for name, overrides in variants}
    template_seeds = [int(s) for s in args.templates.split(",")]
    templates = TemplateSet([template_from_phantom(f"t{s}", make_phantom(s, shape), list(LARGE_ORGANS))
                             for s in template_seeds])
    print(f"templates {template_seeds}, queries {args.first_query}..{args.first_query + args.queries - 1}, shape {shape}"
          f", variants {[n for n, _ in variants]}; load {os.getloadavg()[0]:.2f}", flush=True)
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
    rows = {name: {organ: [] for organ in LARGE_ORGANS} for name in ["unregistered", *configs]}
    seconds = {name: [] for name in configs}
    for seed in range(args.first_query, args.first_query + args.queries):
        query = make_phantom(seed, shape)
        truth = template_from_phantom(f"q{seed}", query, list(LARGE_ORGANS))
        truth_points = {organ: truth.extreme_points(organ) for organ in LARGE_ORGANS}
        for organ in LARGE_ORGANS:
            template_points = np.median([t.extreme_points(organ) for t in templates.templates], axis=0)
            rows["unregistered"][organ].append(organ_errors(template_points, truth_points[organ]))
        line = [f"query {seed} ({query.contrast_phase}):"]
        for name, config in configs.items():
            start = time.perf_counter()
            boxes = localize_registration(templates, query.image, list(LARGE_ORGANS), config=config)
            seconds[name].append(time.perf_counter() - start)
            predicted = {organ: boxes[organ].extreme_points_lps if boxes[organ].present else None
                         for organ in LARGE_ORGANS}
            for organ in LARGE_ORGANS:
                rows[name][organ].append(organ_errors(predicted[organ], truth_points[organ]))
            line.append(f"{name} " + " ".join(f"{rows[name][o][-1]['iou']:.2f}" for o in LARGE_ORGANS)
                        + f" ({seconds[name][-1]:.1f} s)")
            if args.png:
                overlay_png(args.png / f"query{seed}_{name}.png", query, truth_points,
                            {o: p for o, p in predicted.items() if p is not None}, f"query {seed}, {name}")
        print("  " + "  ".join(line), flush=True)

    print(f"\n{'variant':<16}{'organ':<14}{'IoU mean':>9}{'IoU min':>9}{'wall mm':>9}{'point mm':>10}")
    for name, organs in rows.items():
        for organ, values in organs.items():
            iou = [v["iou"] for v in values]
            print(f"{name:<16}{organ:<14}{np.mean(iou):9.3f}{np.min(iou):9.3f}"
                  f"{np.nanmean([v['wall_mm'] for v in values]):9.1f}{np.nanmean([v['point_mm'] for v in values]):10.1f}")
        all_iou = [v["iou"] for values in organs.values() for v in values]
        timing = f", {np.mean(seconds[name]):.1f} s/query" if name in seconds else ""
        print(f"{name:<16}{'ALL':<14}{np.mean(all_iou):9.3f}{np.min(all_iou):9.3f}"
              f"  (mean of organ means {np.mean([np.mean([v['iou'] for v in vs]) for vs in organs.values()]):.3f}"
              f"{timing})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
