#!/usr/bin/env python3
"""Set up MedFoundationSeg on this machine, then run the demo (default) or the test suite (``--test``).

    python3 setup_env.py                 # .venv + torch (CUDA or CPU build) + project + default weights + demo
    python3 setup_env.py --no-demo       # the same, without running the demo
    python3 setup_env.py --test          # the same environment plus test tools, then the pytest suite
    python3 setup_env.py --python PATH   # install into an existing interpreter instead (e.g. Slicer's PythonSlicer)

Standard library only: this file runs before anything is installed. Every step is idempotent (a second run checks and
skips) and a failure names the step and how to fix it. Weights are fetched by the installed package itself
(``medfoundationseg weights fetch``), which verifies size and sha256 and never leaves a half-written file in the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent
MIN_PYTHON = (3, 10)
TORCH_VERSION = "2.13.0"
# Where PyTorch publishes its CPU-only and CUDA builds (used only when the normal index would give the wrong build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
# LiteMedSAM segments; MobileSAM answers its clicked slices (Options.click_model) and the tests use both.
WEIGHTS = ("litemedsam", "mobilesam")
STAMP_NAME = "medfoundationseg-setup.json"


class SetupError(RuntimeError):
    """A named setup step failed; the message says how to fix it."""

    def __init__(self, step: str, problem: str, fix: str):
        super().__init__(f"[{step}] {problem}\n  how to fix: {fix}")
        self.step = step


# --- pure decisions (unit-tested) ---------------------------------------------------------------------------------
def check_python_version(version_info=sys.version_info) -> None:
    if tuple(version_info[:2]) < MIN_PYTHON:
        raise SetupError("python", f"Python {version_info[0]}.{version_info[1]} is too old",
                         f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer: python3.11 setup_env.py")


def choose_torch_variant(requested: str, *, system: str, has_nvidia_gpu: bool) -> str:
    """'cuda' or 'cpu'. ``auto`` takes CUDA only where an NVIDIA GPU is visible; macOS never has CUDA (its CPU build
    includes Apple's MPS backend)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise SetupError("torch", f"unknown --device {requested!r}", "use --device auto, cpu or cuda")
    if requested == "cuda" and system == "Darwin":
        raise SetupError("torch", "CUDA builds of PyTorch do not exist for macOS", "use --device cpu (MPS included)")
    if requested != "auto":
        return requested
    return "cuda" if has_nvidia_gpu and system != "Darwin" else "cpu"


def report_pulls_cuda(report: dict) -> bool:
    """True if a ``pip install --dry-run --report`` resolution would install NVIDIA CUDA runtime packages."""
    for item in report.get("install", []):
        name = item.get("metadata", {}).get("name", "").lower()
        if name.startswith(("nvidia-", "cuda-", "triton")):
            return True
    return False


def resolved_torch_version(report: dict) -> str | None:
    for item in report.get("install", []):
        if item.get("metadata", {}).get("name", "").lower() == "torch":
            return item["metadata"].get("version")
    return None


def torch_install_args(variant: str, *, system: str, dry_run_report: dict | None) -> list[str]:
    """pip arguments that install the chosen torch build.

    CPU: use the normal index when its resolution brings no CUDA packages (a local CPU wheel, macOS, Windows);
    otherwise PyTorch's CPU index. CUDA: Linux wheels on PyPI are CUDA builds; Windows needs PyTorch's CUDA index.
    """
    requirement = f"torch=={TORCH_VERSION}"
    if variant == "cpu":
        if dry_run_report is not None and not report_pulls_cuda(dry_run_report):
            return [requirement]
        return [requirement, "--index-url", TORCH_CPU_INDEX]
    if system == "Windows":
        return [requirement, "--index-url", TORCH_CUDA_INDEX]
    return [requirement]


def installed_torch_matches(probe: dict | None, variant: str) -> bool:
    """``probe`` = {"version": torch.__version__, "cuda": torch.version.cuda} of the target interpreter, or None."""
    if not probe or probe.get("version", "").split("+")[0] != TORCH_VERSION:
        return False
    return bool(probe.get("cuda")) == (variant == "cuda")


def requirements_fingerprint(pyproject_text: str, extras: tuple[str, ...]) -> str:
    """Changes whenever the declared dependencies or requested extras change, so setup re-installs then only."""
    return hashlib.sha256((pyproject_text + "|" + ",".join(sorted(extras))).encode()).hexdigest()[:16]


def venv_python(venv_dir: Path, system: str = platform.system()) -> Path:
    return venv_dir / ("Scripts/python.exe" if system == "Windows" else "bin/python")


def has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            return result.returncode == 0 and "GPU" in result.stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
    return Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())


# --- steps --------------------------------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def run(step: str, command: list[str], fix: str, *, capture: bool = False, env: dict | None = None) -> str:
    try:
        result = subprocess.run(command, text=True, capture_output=capture, env=env)
    except OSError as error:
        raise SetupError(step, f"could not start {command[0]}: {error}", fix) from None
    if result.returncode != 0:
        detail = ""
        if capture:
            lines = (result.stderr or result.stdout or "").strip().splitlines()
            detail = "\n    " + "\n    ".join(lines[-8:])
        raise SetupError(step, f"`{' '.join(command[:6])} ...` failed (exit {result.returncode}){detail}", fix)
    return result.stdout if capture else ""


def ensure_interpreter(args) -> Path:
    if args.python:
        python = Path(args.python)
        if not python.exists():
            raise SetupError("python", f"{python} does not exist", "pass the full path of the interpreter, e.g. "
                             "/opt/Slicer/bin/PythonSlicer")
        return python
    venv_dir = REPO / ".venv"
    python = venv_python(venv_dir)
    if python.exists():
        say(f"virtual environment {venv_dir} exists")
        return python
    say(f"creating virtual environment {venv_dir}")
    try:
        venv.EnvBuilder(with_pip=True, clear=False).create(venv_dir)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SetupError("venv", f"could not create {venv_dir}: {error}",
                         "install the venv module (Debian/Ubuntu: apt-get install python3-venv) and retry") from None
    return python


def probe_torch(python: Path) -> dict | None:
    code = "import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def pip(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "--disable-pip-version-check"]


def ensure_torch(python: Path, variant: str) -> None:
    probe = probe_torch(python)
    if installed_torch_matches(probe, variant):
        say(f"torch {probe['version']} ({variant}) already installed")
        return
    system = platform.system()
    report = None
    if variant == "cpu":
        # Ask pip what a plain `torch==X` would bring here; a local CPU wheel or the macOS/Windows wheels bring no
        # CUDA packages and are used as they are.
        out = run("torch", pip(python) + ["install", "--dry-run", "--quiet", "--report", "-", f"torch=={TORCH_VERSION}"],
                  "check the internet connection to the package index (pip config list shows the index settings)",
                  capture=True)
        try:
            report = json.loads(out[out.index("{"):])
        except ValueError:
            report = None
    extra = torch_install_args(variant, system=system, dry_run_report=report)
    say(f"installing torch {TORCH_VERSION} ({variant} build): pip install {' '.join(extra)}")
    run("torch", pip(python) + ["install", *extra],
        f"install torch {TORCH_VERSION} by hand (https://pytorch.org/get-started/locally/), then rerun setup_env.py")


def ensure_project(python: Path, extras: tuple[str, ...], target_dir: Path) -> None:
    stamp_path = target_dir / STAMP_NAME
    fingerprint = requirements_fingerprint((REPO / "pyproject.toml").read_text(), extras)
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    if stamp.get("fingerprint") == fingerprint and stamp.get("repo") == str(REPO):
        say("project and dependencies already installed (pyproject.toml unchanged)")
        return
    spec = f"{REPO}[{','.join(extras)}]" if extras else str(REPO)
    say(f"installing the project (editable) with {'extras ' + ','.join(extras) if extras else 'no extras'}")
    run("project", pip(python) + ["install", "--quiet", "-e", spec],
        "read the pip error above; a missing compiler or an old pip is the usual cause (pip install -U pip)")
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({"fingerprint": fingerprint, "repo": str(REPO), "time": time.time()}))


def site_stamp_dir(python: Path) -> Path:
    prefix = run("project", [str(python), "-c", "import sys; print(sys.prefix)"], "check the interpreter", capture=True)
    return Path(prefix.strip())


def engine(python: Path, *arguments: str) -> list[str]:
    return [str(python), "-m", "MedFoundationSegLib.cli.main", *arguments]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="install into this interpreter instead of creating .venv")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch build to install")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--test", action="store_true", help="install test tools and run the pytest suite")
    action.add_argument("--no-demo", action="store_true", help="set up and self-check only")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --test --)")
    args = parser.parse_args(argv)

    started = time.time()
    try:
        check_python_version()
        python = ensure_interpreter(args)
        variant = choose_torch_variant(args.device, system=platform.system(), has_nvidia_gpu=has_nvidia_gpu())
        ensure_torch(python, variant)
        extras = ("test", "ray") if args.test else ()
        ensure_project(python, extras, site_stamp_dir(python))
        say(f"weights: {', '.join(WEIGHTS)} (cache: $MEDFOUNDATIONSEG_CACHE or the user cache folder)")
        run("weights", engine(python, "weights", "fetch", *WEIGHTS),
            "check the internet connection to PyPI; a checksum mismatch means the download was damaged: rerun")
        say("self-check")
        run("self-check", engine(python, "selfcheck"), "see the lines above for the missing piece")
        say(f"environment ready in {time.time() - started:.0f} s")
        if not args.test and not args.no_demo:
            say("running the demo: template phantom -> localize -> LiteMedSAM -> refine -> Dice + overlay "
                f"({REPO / 'demo_output'})")
            run("demo", engine(python, "demo", "--overwrite", "--out", str(REPO / "demo_output")),
                "see the error above; the environment itself is ready (rerun with --no-demo to skip the demo)")
        if args.test:
            say("lint: ruff check (pycodestyle, pyflakes, import order)")
            run("lint", [str(python), "-m", "ruff", "check", str(REPO)],
                "fix the lines ruff names above (`ruff check --fix` fixes most of them)")
            # UTF-8 mode: under a C locale torch's compiler cannot read its own kernel templates (the suite compiles
            # the mask decoder once)
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUTF8="1")
            result = subprocess.run([str(python), "-m", "pytest", str(REPO / "Testing"), *args.pytest_args],
                                    cwd=REPO, env=env)
            return result.returncode
    except SetupError as error:
        print(f"\nsetup failed at step {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
