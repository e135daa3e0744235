#!/usr/bin/env python-real
"""Slicer CLI module MedFoundationSegBatch: batch localize + segment + refine (see MedFoundationSegBatch.xml).

Slicer runs this file in its own process. It prints progress in the Slicer Execution Model's XML tags so the CLI
module panel shows a progress bar. Outside Slicer, ``medfoundationseg batch`` takes the same arguments.
"""

import sys
from pathlib import Path


def _make_engine_importable():
    """Slicer's launcher usually puts the extension's scripted-module folder on sys.path; add it (or, in a source
    checkout, the module folder) when it did not, so the engine package imports."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "qt-scripted-modules", here.parent):
        if (folder / "MedFoundationSegLib").is_dir():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))


def _progress(fraction, message=""):
    print(f"<filter-progress>{fraction:.4f}</filter-progress>", flush=True)
    if message:
        print(f"<filter-comment>{message}</filter-comment>", flush=True)


def main(argv):
    if "--xml" in argv:  # Slicer asks every CLI for its descriptor
        print(Path(__file__).with_suffix(".xml").read_text(encoding="utf-8"))
        return 0
    _make_engine_importable()
    from MedFoundationSegLib.cli.batch_cli import execute, parse

    args = parse([a for a in argv if not a.startswith("--returnparameterfile")], prog="MedFoundationSegBatch")
    print("<filter-start><filter-name>MedFoundationSegBatch</filter-name>"
          "<filter-comment>batch annotation</filter-comment></filter-start>", flush=True)
    status = execute(args, progress=_progress)
    print("<filter-end><filter-name>MedFoundationSegBatch</filter-name></filter-end>", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
