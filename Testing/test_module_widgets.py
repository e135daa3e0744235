"""The two Slicer module front ends, checked without Slicer (their self-tests run only inside Slicer):
(a) every widget the code reaches through ``*.ui.<name>`` exists in that module's .ui file, every signal it connects
    exists on the widget's class, and every MRML-aware widget of the .ui gets the scene;
(b) the module files compile; (c) loading them imports no torch and no engine at top level;
(d) the dependency installer's decisions (what is missing -> what is installed, how, after one confirmation)."""

from __future__ import annotations

import ast
import importlib.util
import py_compile
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
MODULES = {
    "MedFoundationSeg": REPO / "MedFoundationSeg" / "MedFoundationSeg.py",
    "MedLAMLocalize": REPO / "MedLAMLocalize" / "MedLAMLocalize.py",
}
UI_FILES = {name: REPO / name / "Resources" / "UI" / f"{name}.ui" for name in MODULES}
DEPENDENCIES_PY = REPO / "MedFoundationSeg" / "MedFoundationSegLogic" / "dependencies.py"
# Which .ui a `<variable>.ui.<name>` access reads, per module file. `segWidget` is MedFoundationSeg's widget as seen
# from MedLAMLocalize ("Send box to MedFoundationSeg"). Any other variable fails the test, so new patterns get a look.
UI_OWNERS = {
    "MedFoundationSeg": {"self": "MedFoundationSeg", "widget": "MedFoundationSeg"},
    "MedLAMLocalize": {"self": "MedLAMLocalize", "widget": "MedLAMLocalize", "segWidget": "MedFoundationSeg"},
}
# Signals of the Slicer/CTK custom widgets, from their C++ headers (Slicer: qMRMLNodeComboBox.h,
# qMRMLSegmentSelectorWidget.h, qSlicerMarkupsPlaceWidget.h; CTK: ctkPathLineEdit.h, ctkColorPickerButton.h,
# ctkCollapsibleButton.h). Qt widgets are checked against PySide6's classes instead.
CUSTOM_SIGNALS = {
    "qMRMLNodeComboBox": {"currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeActivated",
                          "nodeAboutToBeRemoved", "nodeAddedByUser", "nodeAboutToBeEdited"},
    "qMRMLSegmentSelectorWidget": {"currentNodeChanged", "currentSegmentChanged"},
    "qSlicerMarkupsPlaceWidget": {"activeMarkupsPlaceModeChanged", "activeMarkupsFiducialPlaceModeChanged"},
    "ctkPathLineEdit": {"currentPathChanged", "validInputChanged"},
    "ctkColorPickerButton": {"colorChanged"},
    "ctkCollapsibleButton": {"contentsCollapsed"},
}
MRML_AWARE = ("qMRML", "qSlicer")  # class prefixes of widgets that need setMRMLScene
# The only modules the module files may import when Slicer loads them (Slicer-provided, light).
ALLOWED_TOP_LEVEL_IMPORTS = {"logging", "os", "sys", "ctk", "qt", "slicer", "vtk", "slicer.ScriptedLoadableModule",
                             "slicer.util"}


def _ui_widgets(ui_path: Path) -> dict[str, str]:
    """object name -> class for every widget of a .ui file."""
    root = ET.parse(ui_path).getroot()
    return {element.get("name"): element.get("class") for element in root.iter("widget")}


def _ui_accesses(module_path: Path) -> list[tuple[str, str, int, str | None]]:
    """(variable, widget name, line, attribute used on the widget) for every `<variable>.ui.<name>` in the file."""
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name)):
            parent = parents.get(node)
            used = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
            found.append((node.value.value.id, node.attr, node.lineno, used))
    return found


def _connected_signals(module_path: Path):
    """(variable, widget, signal, line) for every `<variable>.ui.<widget>.<signal>.connect(...)`."""
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            signal = node.func.value
            if (isinstance(signal, ast.Attribute) and isinstance(signal.value, ast.Attribute)
                    and isinstance(signal.value.value, ast.Attribute) and signal.value.value.attr == "ui"
                    and isinstance(signal.value.value.value, ast.Name)):
                yield signal.value.value.value.id, signal.value.attr, signal.attr, node.lineno


# --- (a) widgets named in code exist in the .ui ------------------------------------------------------------------
@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_ui_name_used_in_code_exists_in_the_ui_file(module):
    accesses = _ui_accesses(MODULES[module])
    assert len(accesses) > 40, f"{module}.py: expected the widget to use its .ui widgets; found {len(accesses)}"
    owners = UI_OWNERS[module]
    widgets = {name: _ui_widgets(path) for name, path in UI_FILES.items()}
    problems = []
    for variable, name, line, _ in accesses:
        if variable not in owners:
            problems.append(f"line {line}: {variable}.ui.{name}: unknown widget variable {variable!r}")
        elif name not in widgets[owners[variable]]:
            problems.append(f"line {line}: {variable}.ui.{name} is not a widget of {owners[variable]}.ui")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_connected_signals_exist_on_the_widget_classes(module):
    from PySide6 import QtCore, QtWidgets

    widgets = {name: _ui_widgets(path) for name, path in UI_FILES.items()}
    connections = list(_connected_signals(MODULES[module]))
    assert len(connections) >= 10, f"{module}.py connects only {len(connections)} ui signals"
    problems = []
    for variable, name, signal, line in connections:
        cls = widgets[UI_OWNERS[module][variable]][name]
        if cls in CUSTOM_SIGNALS:
            ok = signal in CUSTOM_SIGNALS[cls]
        else:
            qt_class = getattr(QtWidgets, cls, None)
            ok = qt_class is not None and isinstance(getattr(qt_class, signal, None), QtCore.Signal)
        if not ok:
            problems.append(f"line {line}: {cls} {name!r} has no signal {signal!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ui_connections_name_existing_widgets_and_every_mrml_widget_gets_the_scene(module):
    root = ET.parse(UI_FILES[module]).getroot()
    widgets = _ui_widgets(UI_FILES[module])
    scene_receivers = set()
    for connection in root.iter("connection"):
        sender, receiver = connection.findtext("sender"), connection.findtext("receiver")
        assert sender in widgets, f"{module}.ui: connection from unknown widget {sender!r}"
        assert receiver in widgets, f"{module}.ui: connection to unknown widget {receiver!r}"
        if connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)":
            assert sender == module, "the scene comes from the top-level qMRMLWidget"
            assert connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
            scene_receivers.add(receiver)
    needs_scene = {name for name, cls in widgets.items() if cls.startswith(MRML_AWARE) and name != module}
    assert needs_scene, f"{module}.ui has no MRML widgets?"
    assert needs_scene <= scene_receivers, f"{module}.ui: no scene for {sorted(needs_scene - scene_receivers)}"


# --- (b) compile, (c) no heavy top-level imports -------------------------------------------------------------------
@pytest.mark.parametrize("path", [*MODULES.values(), DEPENDENCIES_PY], ids=lambda p: p.name)
def test_module_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when the file is loaded: imports outside function and class bodies (also in if/try)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_files_import_nothing_heavy_at_top_level(module):
    imported = _top_level_imports(MODULES[module])
    assert {"slicer", "qt"} <= imported  # the parser sees the imports at all
    assert imported <= ALLOWED_TOP_LEVEL_IMPORTS, f"{module}.py imports at load time: " \
                                                  f"{sorted(imported - ALLOWED_TOP_LEVEL_IMPORTS)}"
    source = MODULES[module].read_text(encoding="utf-8")
    assert "pip_install(" not in source  # installing happens only in dependencies.py, after a confirmation


def test_the_top_level_import_check_catches_a_heavy_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import qt\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
                   "from MedFoundationSegLib import predictor\ndef f():\n    import monai\n")
    assert _top_level_imports(bad) == {"qt", "torch", "MedFoundationSegLib"}


def test_dependencies_module_loads_without_qt_slicer_or_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import MedFoundationSegLogic.dependencies as d; "
            "heavy = [m for m in ('torch', 'qt', 'slicer', 'monai', 'skimage', 'MedFoundationSegLib') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "MedFoundationSeg")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (d) dependency decisions ----------------------------------------------------------------------------------------
@pytest.fixture
def deps():
    from MedFoundationSegLogic import dependencies

    return dependencies


class FakeFinder:
    """importlib.util.find_spec stand-in: names in ``present`` are found; 'installing' adds to it."""

    def __init__(self, present, broken=()):
        self.present = set(present)
        self.broken = set(broken)

    def __call__(self, name):
        if name in self.broken:
            raise ValueError(f"{name}.__spec__ is None")
        return object() if name in self.present else None


ITK_AND_GEODESIC = ("itk", "itk.MorphologicalContourInterpolationPython", "itk.GrowCutPython", "dijkstra3d", "cv2",
                    "PIL", "highdicom")  # with the resize libraries: the packages these tests take as installed


def test_requirements_txt_matches_pyproject_dependencies(deps):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    declared = {deps.normalize_name(deps.requirement_name(line)): line.replace(" ", "")
                for line in pyproject["project"]["dependencies"]}
    listed = {name: line.replace(" ", "") for name, line in deps.read_requirements().items()}
    assert listed == declared
    assert {deps.normalize_name(d) for d in deps.MODULES.values()} == set(listed)


def test_missing_modules_uses_find_spec_only(deps):
    finder = FakeFinder(present={"numpy", "scipy", "requests", "yaml", "SimpleITK"}, broken={"monai"})
    assert deps.missing_modules(finder)[:4] == ["torch", "skimage", "monai", "maxflow"]
    assert deps.missing_modules(FakeFinder(present=deps.MODULES)) == []


def test_plan_uses_pytorch_utils_when_present_and_pins_from_requirements(deps):
    plan = deps.plan_install(["torch", "skimage", "maxflow"], deps.read_requirements(), pytorch_utils_available=True,
                             system="Linux", has_nvidia_gpu=True)
    assert plan.torch.method == "pytorch-utils" and plan.torch.version_requirement == ">=2.1"
    assert plan.pip_requirements == ["scikit-image>=0.22", "PyMaxflow>=1.3.2"]
    text = plan.describe()
    assert "PyTorch Utils" in text and "scikit-image>=0.22" in text and "PyMaxflow>=1.3.2" in text


def test_plan_without_torch_missing_has_no_torch_step(deps):
    plan = deps.plan_install(["yaml"], deps.read_requirements(), pytorch_utils_available=True, system="Linux",
                             has_nvidia_gpu=False)
    assert plan.torch is None and plan.pip_requirements == ["pyyaml>=6.0"]


@pytest.mark.parametrize("system,gpu,variant", [("Linux", False, "cpu"), ("Linux", True, "cuda"),
                                                ("Windows", True, "cuda"), ("Windows", False, "cpu"),
                                                ("Darwin", True, "cpu")])
def test_pip_torch_follows_setup_env(deps, system, gpu, variant):
    setup_env = deps.load_setup_env()
    assert setup_env is not None and hasattr(setup_env, "torch_install_args")  # the source tree has it
    plan = deps.plan_install(["torch"], deps.read_requirements(), pytorch_utils_available=False, system=system,
                             has_nvidia_gpu=gpu, setup_env=setup_env)
    assert plan.torch.method == "pip" and plan.torch.variant == variant
    assert plan.torch.pip_args == setup_env.torch_install_args(variant, system=system, dry_run_report=None)
    assert plan.pip_requirements == []


@pytest.mark.parametrize("system,gpu,expected", [
    ("Linux", False, ["torch>=2.1", "--index-url", "https://download.pytorch.org/whl/cpu"]),
    ("Linux", True, ["torch>=2.1"]),
    ("Windows", True, ["torch>=2.1", "--index-url", "https://download.pytorch.org/whl/cu128"]),
    ("Windows", False, ["torch>=2.1"]),
    ("Darwin", True, ["torch>=2.1"]),
])
def test_pip_torch_fallback_rule_without_setup_env(deps, system, gpu, expected):
    assert deps.load_setup_env(REPO / "no_such_setup_env.py") is None
    variant, args = deps.torch_pip_plan(system=system, has_nvidia_gpu=gpu, version_requirement=">=2.1",
                                        setup_env=None)
    assert args == expected and variant == ("cuda" if gpu and system != "Darwin" else "cpu")


def test_plan_refuses_a_module_missing_from_the_requirement_list(deps):
    requirements = deps.read_requirements()
    del requirements["pymaxflow"]
    with pytest.raises(deps.DependencyError, match="PyMaxflow"):
        deps.plan_install(["maxflow"], requirements, pytorch_utils_available=False, system="Linux",
                          has_nvidia_gpu=False)


class FakePyTorchUtils:
    def __init__(self, finder):
        self.finder, self.calls = finder, []

    def installTorch(self, **kwargs):
        self.calls.append(kwargs)
        self.finder.present.add("torch")


def _fake_pip(deps, finder, calls, makes_importable=True):
    """pip stand-in: records its arguments and (optionally) makes the installed distributions importable."""
    by_distribution = {deps.normalize_name(dist): module for module, dist in deps.MODULES.items()}

    def pip_install(args):
        calls.append(list(args))
        if makes_importable:
            finder.present.update(by_distribution[deps.normalize_name(deps.requirement_name(arg))]
                                  for arg in args if not arg.startswith(("-", "http")))

    return pip_install


def test_nothing_missing_asks_nothing_installs_nothing(deps):
    finder = FakeFinder(present=deps.MODULES)
    asked, pip_calls = [], []
    outcome = deps.ensure_dependencies(confirm=lambda text: asked.append(text) or True,
                                       pip_install=_fake_pip(deps, finder, pip_calls), find_spec=finder)
    assert outcome.status == "ok" and outcome.ready and not asked and not pip_calls


def test_declined_installs_nothing(deps):
    finder = FakeFinder(present={"numpy"})
    pip_calls = []
    outcome = deps.ensure_dependencies(confirm=lambda text: False, pip_install=_fake_pip(deps, finder, pip_calls),
                                       find_spec=finder, system="Linux", has_nvidia_gpu=False)
    assert outcome.status == "declined" and not outcome.ready and pip_calls == []
    assert "torch" in outcome.still_missing


def test_one_confirmation_then_torch_via_pytorch_utils_then_the_rest(deps):
    finder = FakeFinder(present={"numpy", "scipy", "requests", "SimpleITK", "yaml", *ITK_AND_GEODESIC})
    ptu = FakePyTorchUtils(finder)
    asked, pip_calls, progress = [], [], []
    outcome = deps.ensure_dependencies(confirm=lambda text: asked.append(text) or True,
                                       pip_install=_fake_pip(deps, finder, pip_calls), pytorch_utils=ptu,
                                       progress=lambda f, m: progress.append(f), find_spec=finder, system="Linux",
                                       has_nvidia_gpu=True)
    assert len(asked) == 1 and "monai>=1.3" in asked[0]
    assert ptu.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1"}]
    assert pip_calls == [["scikit-image>=0.22", "monai>=1.3", "PyMaxflow>=1.3.2"]]  # torch never through pip here
    assert outcome.status == "installed" and outcome.ready and not outcome.restart_needed
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_pip_torch_without_pytorch_utils_comes_before_the_rest(deps):
    finder = FakeFinder(present={"numpy", "scipy", "requests", "SimpleITK", "yaml", "skimage", "maxflow",
                                 *ITK_AND_GEODESIC})
    pip_calls = []
    outcome = deps.ensure_dependencies(confirm=lambda text: True, pip_install=_fake_pip(deps, finder, pip_calls),
                                       find_spec=finder, system="Linux", has_nvidia_gpu=False,
                                       setup_env=deps.load_setup_env())
    assert pip_calls[0][0].startswith("torch") and "--index-url" in pip_calls[0]
    assert pip_calls[1] == ["monai>=1.3"]
    assert outcome.ready


def test_still_missing_after_install_means_restart(deps):
    finder = FakeFinder(present=set(deps.MODULES) - {"maxflow"})
    outcome = deps.ensure_dependencies(confirm=lambda text: True,
                                       pip_install=_fake_pip(deps, finder, [], makes_importable=False), find_spec=finder)
    assert outcome.status == "installed" and outcome.restart_needed and outcome.still_missing == ["maxflow"]


def test_failed_pip_names_the_packages(deps):
    finder = FakeFinder(present=set(deps.MODULES) - {"monai"})

    def failing_pip(args):
        raise RuntimeError("pip exited with 1")

    with pytest.raises(deps.DependencyError, match="monai>=1.3 failed: pip exited with 1"):
        deps.ensure_dependencies(confirm=lambda text: True, pip_install=failing_pip, find_spec=finder)


def test_real_find_spec_sees_the_dev_environment_complete(deps):
    """In the dev interpreter every dependency is installed, so the modules would start without asking."""
    assert deps.missing_modules() == [], importlib.util.find_spec("maxflow")
