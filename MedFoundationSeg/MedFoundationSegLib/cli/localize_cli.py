"""``medfoundationseg localize``: boxes for named structures in a query volume, from a template set."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "localize", help="localize structures (3D boxes + extreme points) in a volume from templates",
        description="Few-shot localization with MedLAM (needs its weights) or by registering the templates "
                    "(no weights). Writes one JSON file with, per structure, the 6 extreme points (LPS and RAS), "
                    "the inclusive voxel box on the query grid, the box in mm, SPL slabs and a confidence.")
    parser.add_argument("--templates", required=True, help="template set file (.yaml/.json)")
    parser.add_argument("--query", required=True, help="query volume (NIfTI, NRRD, MHA, or a DICOM folder)")
    parser.add_argument("--engine", choices=("medlam", "registration"), default="registration")
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--structures", nargs="+", help="structure names (default: all common to the templates)")
    parser.add_argument("--mode", choices=("WPL", "SPL"), default="WPL", help="whole box, or up to 6 z-slabs")
    parser.add_argument("--weights", default="medlam", help="MedLAM weights: registry name or file (medlam engine)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (medlam engine)")
    parser.add_argument("--recentre", type=int, default=0, help="extra RDR re-centring steps (medlam engine)")
    parser.add_argument("--scales", nargs="*", default=None,
                        help="MSS feature scales (feature0 feature1 feature2); give none to turn MSS off")
    parser.add_argument("--bspline", action="store_true", help="add a B-spline stage (registration engine)")
    parser.add_argument("--modality", default="auto", choices=("auto", "CT", "MR", "unit"))
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_localize)


def run_localize(args: argparse.Namespace) -> int:
    from MedFoundationSegLib.core.boxes import boxes_to_json
    from MedFoundationSegLib.core.volume import read_volume
    from MedFoundationSegLib.localize.templates import TemplateSet

    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the path of the JSON file to write")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {out.parent} is a file, not a folder")

    def progress(fraction: float, message: str) -> None:
        log.info("%3d%% %s", round(100 * fraction), message)

    start = time.perf_counter()
    templates = TemplateSet.load(args.templates)
    query = read_volume(args.query)
    loaded = time.perf_counter()
    boxes = _localize(args, templates, query, progress)
    done = time.perf_counter()
    data = boxes_to_json(boxes, query, {"engine": args.engine, "mode": args.mode,
                                        "templates": str(Path(args.templates).resolve()),
                                        "timings_s": {"load": round(loaded - start, 3),
                                                      "localize": round(done - loaded, 3)}})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for box in boxes.values():
        state = (f"box ijk {box.box_ijk.tolist()}" if box.present else
                 f"ABSENT ({box.details.get('reason', 'it lies outside the volume')})")
        if box.partial:
            state += f", PARTIAL ({box.fraction_inside:.0%} of it inside the volume)"
        print(f"{box.name}: {state}, confidence {box.confidence:.2f}")
    print(f"wrote {out}")
    return 0


def _localize(args: argparse.Namespace, templates, query, progress) -> dict:
    if args.engine == "registration":
        from MedFoundationSegLib.localize.registration import RegistrationConfig, localize_registration

        return localize_registration(templates, query, args.structures,
                                     RegistrationConfig(bspline=args.bspline, seed=args.seed),
                                     spl=args.mode == "SPL", progress=progress)
    from MedFoundationSegLib.localize.medlam.localizer import MedLAMConfig, MedLAMLocalizer
    from MedFoundationSegLib.localize.medlam.network import FEATURE_NAMES

    scales = FEATURE_NAMES if args.scales is None else tuple(args.scales)
    config = MedLAMConfig(mode=args.mode, feature_scales=scales, recentre_iterations=args.recentre,
                          seed=args.seed, modality=args.modality)
    return MedLAMLocalizer(args.weights, None if args.device == "auto" else args.device,
                           config).localize(templates, query, args.structures, progress=progress)
