"""Python packages the extension needs inside 3D Slicer: find what is missing, plan one install, run it once confirmed.

Why a module of its own: Slicer ships its own Python without torch, MONAI, scikit-image, PyMaxflow, so the first use
of either module must install them. Nothing here runs at import time and nothing imports Qt: detection and planning
are pure functions (unit-tested with ``find_spec`` replaced), ``ensure_dependencies`` takes the Slicer callables
(confirm dialog, pip, PyTorch Utils) as arguments, and ``slicer_ensure_dependencies`` wires in Slicer's own.

torch comes first and is special: the CPU or CUDA build must match the machine. The PyTorch Utils extension
(light-the-torch) decides when it is installed; otherwise the rule of the repository's setup_env.py is reused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import platform
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parents[1]  # .../MedFoundationSeg (the Slicer module folder)
REQUIREMENTS_PATH = MODULE_DIR / "Resources" / "requirements.txt"
SETUP_ENV_PATH = MODULE_DIR.parent / "setup_env.py"  # present when Slicer runs the modules from the source tree

# import name -> distribution name in requirements.txt (what is checked -> what is installed)
MODULES = {
    "torch": "torch",
    "numpy": "numpy",
    "SimpleITK": "SimpleITK",
    "skimage": "scikit-image",
    "scipy": "scipy",
    "monai": "monai",
    "yaml": "pyyaml",
    "requests": "requests",
    "maxflow": "PyMaxflow",
    "itk": "itk",
    # ITK remote modules install into the itk package; finding their submodule loads only itk's light __init__.
    "itk.MorphologicalContourInterpolationPython": "itk-morphologicalcontourinterpolation",
    "itk.GrowCutPython": "itk-growcut",
    "dijkstra3d": "dijkstra3d",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "highdicom": "highdicom",
}

# Used only when setup_env.py is not importable (an installed extension ships without it); same rule as setup_env.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"


class DependencyError(RuntimeError):
    """The dependency list is inconsistent or an install step failed; the message says which."""


# --- pure decisions -------------------------------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """PEP 503 name: 'PyMaxflow' == 'pymaxflow', 'scikit_image' == 'scikit-image'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if not match:
        raise DependencyError(f"not a requirement line: {line!r}")
    return match.group(1)


def parse_requirements(text: str) -> dict[str, str]:
    """requirements.txt text -> {normalized name: requirement line}; comments and blank lines skipped."""
    requirements = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirements[normalize_name(requirement_name(line))] = line
    return requirements


def read_requirements(path: str | Path = REQUIREMENTS_PATH) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise DependencyError(f"the extension's requirement list is missing: {path}")
    return parse_requirements(path.read_text(encoding="utf-8"))


def missing_modules(find_spec: Callable = importlib.util.find_spec, modules: Sequence[str] = tuple(MODULES)
                    ) -> list[str]:
    """Import names that cannot be found (find_spec only: nothing is imported, so this is cheap and safe)."""
    missing = []
    for name in modules:
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):  # a broken half-installed package counts as missing
            spec = None
        if spec is None:
            missing.append(name)
    return missing


def version_floor(requirement_line: str) -> str:
    """'torch>=2.1' -> '>=2.1' (what PyTorch Utils takes as torchVersionRequirement)."""
    return requirement_line[len(requirement_name(requirement_line)):].strip()


_SETUP_ENV = None


def load_setup_env(path: str | Path = SETUP_ENV_PATH):
    """setup_env.py as a module when the extension runs from the source tree, else None (then the fallback rule)."""
    global _SETUP_ENV
    path = Path(path)
    if _SETUP_ENV is not None and Path(_SETUP_ENV.__file__) == path:
        return _SETUP_ENV
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_medfoundationseg_setup_env", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a broken or foreign file must not stop the fallback
        log.warning("could not load %s (%s); using the built-in torch rule", path, error)
        return None
    _SETUP_ENV = module
    return module


def torch_pip_plan(*, system: str, has_nvidia_gpu: bool, version_requirement: str, setup_env=None
                   ) -> tuple[str, list[str]]:
    """('cpu'|'cuda', pip arguments) for torch without PyTorch Utils: setup_env.py's own decision when available."""
    if setup_env is not None:
        variant = setup_env.choose_torch_variant("auto", system=system, has_nvidia_gpu=has_nvidia_gpu)
        return variant, list(setup_env.torch_install_args(variant, system=system, dry_run_report=None))
    variant = "cuda" if has_nvidia_gpu and system != "Darwin" else "cpu"
    requirement = f"torch{version_requirement}"
    if variant == "cpu" and system == "Linux":  # Linux wheels on PyPI are CUDA builds: ask PyTorch's CPU index
        return variant, [requirement, "--index-url", TORCH_CPU_INDEX]
    if variant == "cuda" and system == "Windows":  # Windows wheels on PyPI are CPU builds
        return variant, [requirement, "--index-url", TORCH_CUDA_INDEX]
    return variant, [requirement]


@dataclasses.dataclass
class TorchStep:
    method: str  # "pytorch-utils" | "pip"
    version_requirement: str  # e.g. ">=2.1"
    variant: str  # "cpu" | "cuda" | "chosen by PyTorch Utils"
    pip_args: list[str] = dataclasses.field(default_factory=list)  # for method "pip"


@dataclasses.dataclass
class InstallPlan:
    missing: list[str]
    torch: TorchStep | None
    pip_requirements: list[str]

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.pip_requirements

    def describe(self) -> str:
        """The text of the one confirmation dialog."""
        lines = ["MedFoundationSeg needs Python packages that are not installed in Slicer yet:"]
        if self.torch is not None:
            how = ("with the PyTorch Utils extension" if self.torch.method == "pytorch-utils"
                   else f"with pip ({self.torch.variant} build: {' '.join(self.torch.pip_args)})")
            lines.append(f"  - PyTorch (torch{self.torch.version_requirement}) {how}")
        lines += [f"  - {requirement}" for requirement in self.pip_requirements]
        lines.append("Downloading can take several minutes (PyTorch alone is hundreds of MB). Install now?")
        return "\n".join(lines)


def plan_install(missing: Sequence[str], requirements: dict[str, str], *, pytorch_utils_available: bool,
                 system: str, has_nvidia_gpu: bool, setup_env=None) -> InstallPlan:
    """What to install for the missing import names, in order: torch first (others such as MONAI depend on it)."""
    unknown = [name for name in missing if name not in MODULES]
    if unknown:
        raise DependencyError(f"no distribution known for module(s) {unknown}")
    lines = {}
    for name in missing:
        key = normalize_name(MODULES[name])
        if key not in requirements:
            raise DependencyError(f"{MODULES[name]} (for 'import {name}') is not listed in {REQUIREMENTS_PATH.name}")
        lines[name] = requirements[key]
    torch = None
    if "torch" in lines:
        floor = version_floor(lines["torch"])
        if pytorch_utils_available:
            torch = TorchStep("pytorch-utils", floor, "chosen by PyTorch Utils")
        else:
            variant, args = torch_pip_plan(system=system, has_nvidia_gpu=has_nvidia_gpu, version_requirement=floor,
                                           setup_env=setup_env)
            torch = TorchStep("pip", floor, variant, args)
    others = [lines[name] for name in missing if name != "torch"]
    return InstallPlan(list(missing), torch, others)


def detect_nvidia_gpu(setup_env=None) -> bool:
    if setup_env is not None:
        return bool(setup_env.has_nvidia_gpu())
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/gpus").is_dir()


# --- the one function the widgets call (through slicer_ensure_dependencies) ------------------------------------------
@dataclasses.dataclass
class Outcome:
    status: str  # "ok" (nothing missing) | "declined" | "installed"
    plan: InstallPlan | None = None
    still_missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.status in ("ok", "installed") and not self.still_missing

    @property
    def restart_needed(self) -> bool:
        """Installed, but this Python process still cannot find some of it: Slicer must restart."""
        return self.status == "installed" and bool(self.still_missing)


def ensure_dependencies(*, confirm: Callable[[str], bool], pip_install: Callable[[list[str]], object],
                        pytorch_utils=None, progress: Callable[[float, str], None] | None = None,
                        find_spec: Callable = importlib.util.find_spec, system: str | None = None,
                        has_nvidia_gpu: bool | None = None, requirements: dict[str, str] | None = None,
                        setup_env=None) -> Outcome:
    """Detect, ask once, install torch then the rest, re-check. ``pytorch_utils``: a PyTorchUtilsLogic or None."""
    missing = missing_modules(find_spec)
    if not missing:
        return Outcome("ok")
    setup_env = setup_env if setup_env is not None else load_setup_env()
    system = system or platform.system()
    if has_nvidia_gpu is None:
        has_nvidia_gpu = detect_nvidia_gpu(setup_env) if "torch" in missing else False
    plan = plan_install(missing, requirements if requirements is not None else read_requirements(),
                        pytorch_utils_available=pytorch_utils is not None, system=system,
                        has_nvidia_gpu=has_nvidia_gpu, setup_env=setup_env)
    if not confirm(plan.describe()):
        log.info("installation of %s declined", ", ".join(missing))
        return Outcome("declined", plan, missing)
    report = progress or (lambda fraction, message: None)
    steps = (plan.torch is not None) + bool(plan.pip_requirements)
    done = 0
    if plan.torch is not None:
        report(0.0, "Installing PyTorch (this can take several minutes)...")
        try:
            if plan.torch.method == "pytorch-utils":
                pytorch_utils.installTorch(askConfirmation=False, torchVersionRequirement=plan.torch.version_requirement)
            else:
                pip_install(plan.torch.pip_args)
        except Exception as error:
            raise DependencyError(f"installing PyTorch failed: {error}") from error
        done += 1
    if plan.pip_requirements:
        report(done / steps, "Installing " + ", ".join(requirement_name(r) for r in plan.pip_requirements) + "...")
        try:
            pip_install(list(plan.pip_requirements))
        except Exception as error:
            raise DependencyError(f"installing {', '.join(plan.pip_requirements)} failed: {error}") from error
    report(1.0, "Checking the installation...")
    importlib.invalidate_caches()
    return Outcome("installed", plan, missing_modules(find_spec, missing))


def slicer_ensure_dependencies(module_title: str = "MedFoundationSeg") -> bool:
    """Inside Slicer: one confirmation dialog, a progress dialog, a restart offer if needed. True when ready."""
    import slicer  # only inside Slicer, only when called

    dialog = None

    def progress(fraction: float, message: str) -> None:
        nonlocal dialog
        if dialog is None:
            dialog = slicer.util.createProgressDialog(windowTitle=f"{module_title}: installing Python packages",
                                                      labelText=message, maximum=100)
        dialog.value = int(round(100 * fraction))
        dialog.labelText = message
        slicer.app.processEvents()

    def confirm(text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, windowTitle=f"{module_title}: install Python packages")

    try:
        outcome = ensure_dependencies(confirm=confirm, pip_install=slicer.util.pip_install,
                                      pytorch_utils=_pytorch_utils_logic(slicer), progress=progress)
    finally:
        if dialog is not None:
            dialog.close()
    if outcome.status == "declined":
        return False
    if outcome.restart_needed:
        if slicer.util.confirmOkCancelDisplay(
                "The packages were installed, but " + ", ".join(outcome.still_missing) + " can only be loaded after "
                "Slicer restarts. Restart Slicer now? (Save your scene first: choose Cancel, save, then restart "
                "Slicer yourself.)", windowTitle=f"{module_title}: restart Slicer"):
            slicer.util.restart()
        return False
    if outcome.status == "installed":
        log.info("%s: installed %s", module_title, ", ".join(outcome.plan.missing))
    return outcome.ready


def _pytorch_utils_logic(slicer):
    """PyTorchUtilsLogic when the PyTorch Utils extension is installed, else None."""
    if not hasattr(slicer.modules, "pytorchutils"):
        return None
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()
