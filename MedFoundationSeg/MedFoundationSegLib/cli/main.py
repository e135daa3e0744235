"""The ``medfoundationseg`` command: one entry point, one module per subcommand group.

Each module listed in ``SUBCOMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` (called with the parsed namespace, returns an exit status). Modules are imported when the parser is built but
keep heavy imports (torch, SimpleITK) inside their handlers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from MedFoundationSegLib.core.errors import WeightsError

SUBCOMMAND_MODULES = (
    "MedFoundationSegLib.cli.weights_cli",
    "MedFoundationSegLib.cli.localize_cli",
    "MedFoundationSegLib.cli.demo_cli",
    "MedFoundationSegLib.cli.batch_cli",
    "MedFoundationSegLib.cli.train_cli",
    "MedFoundationSegLib.cli.serve_cli",
    "MedFoundationSegLib.cli.heads_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from MedFoundationSegLib import __version__

    parser = argparse.ArgumentParser(
        prog="medfoundationseg",
        description="MedLAM localization + SAM-family segmentation for 3D volumes (the engine behind the Slicer modules).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from MedFoundationSegLib.cli.batch_cli import join_negative_values

    parser = build_parser()
    # "--extremePoints -10,-20,30": a negative coordinate must not read as an option
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"medfoundationseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, WeightsError) as error:  # foreseeable: one line naming the problem
        if args.debug:
            raise
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        print(f"medfoundationseg {args.command}: {' '.join(text.split()) or type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
