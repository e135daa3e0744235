"""The whole job on built-in data, as a user would do it (``medfoundationseg demo``).

A template phantom gets its organs' 6 extreme points "clicked" (taken from its labels, as a careful user would
place them); a few other phantoms (different subjects: size, shape, position, slice spacing) are then localized,
segmented with the built-in LiteMedSAM, refined and written out. Dice per organ and an overlay montage come back.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from MedFoundationSegLib.core.volume import write_volume
from MedFoundationSegLib.io import overlay
from MedFoundationSegLib.localize.templates import Template, TemplateSet, structure_points_from_mask
from MedFoundationSegLib.sampledata.metrics import dice
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow.case import run_case
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session

DEMO_STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right")
REPORT_NAME = "demo_report.txt"


def run_demo(out: Path, *, queries: int = 2, shape=(48, 160, 160), options: Options | None = None,
             echo=print) -> list[str]:
    """Write the template, annotate ``queries`` phantoms into ``out/queryNN/`` and return the summary lines."""
    options = options or Options(padding_mm=3.0)
    started = time.perf_counter()
    template = _template(out, shape)
    echo(f"template phantom: 6 extreme points clicked for {', '.join(DEMO_STRUCTURES)} -> {out / 'templates.yaml'}")
    session = Session()
    rows, tiles = [], []
    for q in range(queries):
        name = f"query{q + 1:02d}"
        scores, seconds, engine, tile = _annotate(session, template, make_phantom(101 + q, shape), out / name,
                                                  options)
        rows.append((scores, engine))
        tiles.append(tile)
        echo(f"{name}: " + "  ".join(f"{s} {d:.3f}" for s, d in scores.items()) + f"  ({seconds:.0f} s)")
    png = overlay.write_png(overlay.montage(tiles), out / "overlay_montage.png")
    means = {s: float(np.mean([scores[s] for scores, _ in rows])) for s in DEMO_STRUCTURES}
    lines = [f"MedFoundationSeg demo: {queries} query phantoms, model {options.model}, refine {options.refine}, "
             f"localizer {rows[0][1]}",
             "mean Dice per organ: " + "  ".join(f"{s} {d:.3f}" for s, d in means.items()),
             f"mean Dice over organs: {np.mean(list(means.values())):.3f}",
             f"outputs: {out}/query*/segmentation.seg.nrrd, labels.nii.gz, report.json; overlay: {png}",
             f"total time: {time.perf_counter() - started:.0f} s"]
    (out / REPORT_NAME).write_text("\n".join(lines) + "\n")
    return lines


def _template(out: Path, shape) -> Template:
    """The template phantom with its organs' extreme points, saved as ``templates.yaml`` + ``template.nrrd``."""
    phantom = make_phantom(100, shape)
    points = {name: structure_points_from_mask(phantom.labels, phantom.labels.array == phantom.label_ids[name])
              for name in DEMO_STRUCTURES}
    template = Template.from_volumes("template", phantom.image, points_lps=points)
    template.image_path = write_volume(phantom.image, out / "template.nrrd", overwrite=True)
    TemplateSet([template]).save(out / "templates.yaml")
    return template


def _annotate(session: Session, template: Template, query, case_dir: Path, options: Options):
    """One query phantom end to end: (Dice per organ, seconds, localizer, overlay tile)."""
    start = time.perf_counter()
    report = run_case(session, TemplateSet([template]), query.image, case_dir, options=options, overwrite=True)
    seconds = time.perf_counter() - start
    write_volume(query.image, case_dir / "image.nrrd", overwrite=True)  # after the case folder is in place
    write_volume(query.labels, case_dir / "truth_labels.nii.gz", overwrite=True)
    predicted = report["labels_kji"]
    scores, truth_ids = {}, np.zeros_like(predicted)
    for structure in DEMO_STRUCTURES:
        entry = report["structures"][structure]
        truth = query.labels.array == query.label_ids[structure]
        scores[structure] = dice(predicted == entry["label"], truth) if entry.get("present") else 0.0
        truth_ids[truth] = entry.get("label", 0)
    present = [report["structures"][s]["label"] for s in DEMO_STRUCTURES if report["structures"][s].get("present")]
    tile = overlay.case_tiles(query.image.array, predicted, truth_ids, query.image.spacing_mm, present or [1])
    return scores, seconds, report["localizer"]["engine"], tile
