"""``medfoundationseg batch``: the same arguments as the Slicer CLI module MedFoundationSegBatch (its XML longflags),
so one parser serves the terminal and Slicer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedFoundationSegLib.workflow import options

POINT_FLAGS = ("--extremePoints", "--extreme-points")


def join_negative_values(argv: list[str], flags=POINT_FLAGS) -> list[str]:
    """Slicer passes each point as ``--extremePoints -10,-20,30``; argparse takes ``-10,...`` for an option and
    fails. Joining flag and value with ``=`` keeps negative coordinates intact."""
    out, index = [], 0
    while index < len(argv):
        item = argv[index]
        if item in flags and index + 1 < len(argv):
            out.append(f"{item}={argv[index + 1]}")
            index += 2
            continue
        out.append(item)
        index += 1
    return out


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is x,y,z in mm; got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"a point has 3 coordinates x,y,z; got {text!r}")
    return values


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("templates (a template set file, or one structure given by 6 points)")
    source.add_argument("--templates", help="template set file (.yaml/.json) from MedLAMLocalize or `localize`")
    source.add_argument("--templateVolume", "--template-volume", help="template volume for --extremePoints")
    source.add_argument("--structure", default="structure", help="name of the structure given by --extremePoints")
    source.add_argument("--extremePoints", "--extreme-points", type=_point, action="append", default=[],
                        metavar="X,Y,Z", help="one of the 6 extreme points (repeat 6 times), in --pointsSystem mm")
    source.add_argument("--pointsSystem", "--points-system", choices=("ras", "lps"), default="ras",
                        help="coordinate system of --extremePoints (Slicer passes RAS)")
    queries = parser.add_argument_group("queries and outputs")
    queries.add_argument("--queries", help="folder of volumes, a text list (one path per line) or a CSV with a path "
                                           "column")
    queries.add_argument("--queryVolume", "--query-volume", action="append", default=[],
                         help="a single query volume (repeatable)")
    queries.add_argument("--outputFolder", "--output-folder", required=True, help="one sub-folder per case")
    queries.add_argument("--overwrite", action="store_true", help="redo finished cases and replace their outputs")
    queries.add_argument("--heads", metavar="FOLDER", help="structure heads folder (its heads/ sub-folder, e.g. the "
                         "template set's folder, where the Slicer panel keeps them): a structure with a stored head "
                         "for the model starts from what earlier volumes taught")
    options.add_arguments(parser.add_argument_group("method"))
    cluster = parser.add_argument_group("scale-out on Ray (optional: pip install 'medfoundationseg[ray]')")
    cluster.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                         help="run the cases on Ray: alone or 'local' starts a private cluster on this machine, "
                              "'auto' joins the one started here with `ray start`, HOST:PORT joins that one")
    cluster.add_argument("--rayWorkers", "--ray-workers", type=int, default=None, metavar="N",
                         help="workers (default: one per GPU, else one per --rayCpusPerWorker CPU cores)")
    cluster.add_argument("--rayCpusPerWorker", "--ray-cpus-per-worker", type=int, default=2, metavar="N",
                         help="CPU cores per worker when the cluster has no GPU (default 2)")
    cluster.add_argument("--rayRetries", "--ray-retries", type=int, default=2, metavar="N",
                         help="times a case whose worker died is run again before it is recorded as failed")


def build_parser(prog: str = "medfoundationseg batch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_batch_arguments(parser)
    return parser


def register(subparsers) -> None:
    parser = subparsers.add_parser("batch", help="localize + segment + refine a folder/list/CSV of volumes")
    add_batch_arguments(parser)
    parser.set_defaults(func=run)


def parse(argv: list[str], prog: str = "medfoundationseg batch") -> argparse.Namespace:
    return build_parser(prog).parse_args(join_negative_values(list(argv)))


def template_set_from_args(args):
    """A TemplateSet from --templates, or from --templateVolume + 6 --extremePoints."""
    import numpy as np

    from MedFoundationSegLib.core.volume import LPS_TO_RAS, read_volume
    from MedFoundationSegLib.localize.templates import Template, TemplateError, TemplateSet

    if args.templates:
        if args.extremePoints:
            raise TemplateError("give either --templates or --extremePoints, not both")
        return TemplateSet.load(args.templates)
    if not args.templateVolume or len(args.extremePoints) != 6:
        raise TemplateError(f"without --templates, give --templateVolume and exactly 6 --extremePoints "
                            f"(got {len(args.extremePoints)} points)")
    points = np.asarray(args.extremePoints, float)
    points_lps = points @ LPS_TO_RAS if args.pointsSystem == "ras" else points
    image = read_volume(args.templateVolume)
    template = Template.from_volumes(Path(args.templateVolume).name, image, points_lps={args.structure: points_lps})
    template.image_path = Path(args.templateVolume)
    return TemplateSet([template])


def queries_from_args(args) -> list[Path]:
    from MedFoundationSegLib.core.volume_files import collect_queries
    from MedFoundationSegLib.workflow.batch import BatchError

    queries = [Path(q) for q in args.queryVolume]
    if args.queries:
        queries += collect_queries(args.queries)
    if not queries:
        raise BatchError("no queries: give --queries (folder, list or CSV) or --queryVolume")
    return queries


def execute(args, progress=None) -> int:
    """Everything after argument parsing; returns the exit status (1 if any case failed)."""
    import functools

    from MedFoundationSegLib.workflow.batch import run_batch
    from MedFoundationSegLib.workflow.case import (
        case_fingerprint,
        check_prerequisites,
        check_template_set,
        run_case,
    )
    from MedFoundationSegLib.workflow.session import Session

    run_options = options.from_arguments(args)
    check_prerequisites(run_options)
    template_set = template_set_from_args(args)
    check_template_set(template_set)
    queries = queries_from_args(args)
    heads = stored_heads(args.heads, template_set, run_options.model) if args.heads else None
    fingerprint = case_fingerprint(template_set, run_options, heads=heads)
    if args.ray:
        from MedFoundationSegLib.workflow.ray_batch import ClusterOptions, run_batch_ray

        cluster = ClusterOptions(address=args.ray, workers=args.rayWorkers, cpus_per_worker=args.rayCpusPerWorker,
                                 retries=args.rayRetries)
        outcomes = run_batch_ray(queries, args.outputFolder, template_set, run_options, cluster=cluster,
                                 overwrite=args.overwrite, fingerprint=fingerprint, heads=heads, progress=progress)
    else:
        process = functools.partial(run_case, Session(), template_set, options=run_options, heads=heads)
        outcomes = run_batch(queries, args.outputFolder, process, overwrite=args.overwrite, fingerprint=fingerprint,
                             progress=progress)
    failed = [o for o in outcomes if o.status in ("failed", "cancelled")]
    done = sum(o.status == "ok" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    print(f"batch: {done} done, {skipped} skipped (already finished), {len(failed)} failed -> "
          f"{Path(args.outputFolder) / 'summary.csv'}")
    for outcome in failed:
        print(f"  FAILED {outcome.case}: {outcome.error or outcome.status}", file=sys.stderr)
    return 1 if failed else 0


def stored_heads(folder: str, template_set, model: str) -> dict:
    """The stored heads of the template set's structures for ``model`` (read once, before the first case)."""
    from MedFoundationSegLib.io.head_store import HeadStore

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--heads: no folder {folder}")
    store = HeadStore(folder)
    heads = {name: store.load(name, model) for name in template_set.structures()}
    found = {name: arrays for name, arrays in heads.items() if arrays is not None}
    print(f"heads: {len(found)} of {len(heads)} structures have a stored head for {model}"
          + (f" ({', '.join(sorted(found))})" if found else ""))
    return found


def _terminal_progress():
    if not sys.stderr.isatty():
        return None

    def show(fraction: float, message: str = "") -> None:
        filled = int(30 * fraction)
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% {message[:50]:<50}", end="",
              file=sys.stderr, flush=True)
    return show


def run(args) -> int:
    return execute(args, progress=_terminal_progress())
