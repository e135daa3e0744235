"""The engine's shape: one package cut by domain, arrows one way, no Slicer import, small files and functions.

Layers (an import may only point to the same layer or one below it):
modules (Slicer widgets + Logic) -> cli -> server -> workflow -> localize | segment | io | sampledata -> runtime -> models
-> core. ``localize`` and ``segment`` never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "MedFoundationSeg" / "MedFoundationSegLib"
PACKAGE = "MedFoundationSegLib"
# What each subpackage may import from the engine (besides itself and the package root's __version__).
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "runtime": {"core", "models"},
    "localize": {"core", "runtime", "models"},
    "segment": {"core", "runtime", "models"},
    "io": {"core"},
    "sampledata": {"core", "io", "localize"},  # phantoms as localization templates
    "workflow": {"core", "runtime", "models", "localize", "segment", "io", "sampledata"},
    "server": {"core", "runtime", "models", "localize", "segment", "io", "sampledata", "workflow"},
    "cli": {"core", "runtime", "models", "localize", "segment", "io", "sampledata", "workflow", "server"},
}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
WAIVER = "size-waiver:"  # a comment in the first 15 lines of the file or function that says why it is longer


def _engine_imports(path: Path) -> set[str]:
    """Engine modules imported by ``path`` (absolute names; relative imports resolved)."""
    module = ".".join((PACKAGE, *path.relative_to(ENGINE).with_suffix("").parts))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in (PACKAGE, "slicer", "qt", "ctk", "MedFoundationSegLogic",
                                                                 "MedLAMLocalizeLogic", "MedLAMLocalizeLib")}


def _subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE and (ENGINE / parts[1]).is_dir() else None


def test_engine_layers_point_one_way_and_never_to_slicer():
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        own = path.relative_to(ENGINE).parts[0] if len(path.relative_to(ENGINE).parts) > 1 else None
        for name in _engine_imports(path):
            if name.split(".")[0] != PACKAGE:
                problems.append(f"{path.relative_to(REPO)} imports {name} (the engine never imports Slicer code)")
                continue
            target = _subpackage(name)
            if own is None or target is None or target == own:
                continue
            if target not in ALLOWED[own]:
                problems.append(f"{path.relative_to(REPO)} ({own}) imports {name} ({target}): an arrow upwards")
    assert not problems, "\n".join(problems)


def test_engine_subpackages_have_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for path in ENGINE.rglob("*.py"):
        own = path.relative_to(ENGINE).parts[0] if len(path.relative_to(ENGINE).parts) > 1 else None
        if own:
            graph.setdefault(own, set()).update(t for t in map(_subpackage, _engine_imports(path)) if t and t != own)
    visiting, done = set(), set()

    def visit(node, trail):
        assert node not in visiting, f"import cycle: {' -> '.join(trail + [node])}"
        if node in done:
            return
        visiting.add(node)
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])
    assert "segment" not in graph.get("localize", set()) and "localize" not in graph.get("segment", set())


def test_the_old_split_packages_are_gone():
    assert not (REPO / "MedLAMLocalize" / "MedLAMLocalizeLib").exists()
    assert not any((ENGINE / name).exists() for name in ("pipeline.py", "volume.py", "predictor.py"))


def _product_files():
    for folder in (ENGINE, REPO / "MedFoundationSeg" / "MedFoundationSegLogic",
                   REPO / "MedLAMLocalize" / "MedLAMLocalizeLogic"):
        yield from sorted(folder.rglob("*.py"))
    yield REPO / "MedFoundationSeg" / "MedFoundationSeg.py"
    yield REPO / "MedLAMLocalize" / "MedLAMLocalize.py"


def test_product_files_and_functions_stay_small():
    problems = []
    for path in _product_files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if len(lines) > MAX_FILE_LINES and WAIVER not in "\n".join(lines[:15]):
            problems.append(f"{path.relative_to(REPO)}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1: node.lineno + 14])
                if length > MAX_FUNCTION_LINES and WAIVER not in head:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert not problems, "\n".join(problems)



def test_old_slicer_gets_a_clear_message_and_the_check_parses_on_old_python():
    from MedFoundationSegLogic.compatibility import slicer_version_problem

    path = REPO / "MedFoundationSeg" / "MedFoundationSegLogic" / "compatibility.py"
    ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 6))  # an old Slicer's Python must import it
    assert slicer_version_problem(5, 10, (3, 12)) is None and slicer_version_problem(6, 0, (3, 12)) is None
    message = slicer_version_problem(5, 8, (3, 9))
    assert "5.10 or newer" in message and "Slicer 5.8" in message and "\n" not in message


def test_ray_is_imported_only_by_the_ray_batch_and_only_when_a_run_asks():
    """Ray is an optional extra: one module imports it, inside a function; a serial batch never loads it."""
    import subprocess
    import sys

    importers = []
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "ray" for name in names):
                importers.append(path.relative_to(ENGINE).as_posix())
                assert node.col_offset > 0, f"{path}: Ray imported at module level"
    assert importers == ["workflow/ray_batch.py"], importers
    probe = ("import sys; from MedFoundationSegLib.cli import batch_cli, main; from MedFoundationSegLib.workflow import "
             "batch, ray_batch, case; main.build_parser(); print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
