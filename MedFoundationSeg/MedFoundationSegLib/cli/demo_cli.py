"""``medfoundationseg demo``: localize + segment + refine phantoms end to end and report Dice."""

from __future__ import annotations

from pathlib import Path

from MedFoundationSegLib.workflow.options import REFINE_METHODS


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="localize + segment + refine phantoms end to end and report Dice")
    parser.add_argument("--out", default="demo_output", help="output folder (default: ./demo_output)")
    parser.add_argument("--queries", type=int, default=2, help="number of query phantoms (default 2)")
    parser.add_argument("--shape", default="48,160,160", help="phantom size z,y,x in voxels")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--refine", default="graphcut", choices=REFINE_METHODS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run")
    parser.set_defaults(func=run)


def run(args) -> int:
    from MedFoundationSegLib.workflow.demo import REPORT_NAME, run_demo
    from MedFoundationSegLib.workflow.options import Options

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give --out a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / REPORT_NAME).exists():
            raise FileExistsError(f"{out} is not empty and holds no earlier demo run; give --out an empty or new "
                                  "folder")
        if not args.overwrite:
            raise FileExistsError(f"{out} holds an earlier demo run; pass --overwrite to replace it (or --out "
                                  "another folder)")
    shape = tuple(int(v) for v in args.shape.split(","))
    options = Options(model=args.model, refine=args.refine, device=args.device, padding_mm=3.0)
    print("\n".join(run_demo(out, queries=args.queries, shape=shape, options=options)))
    return 0
