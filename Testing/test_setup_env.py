"""setup_env.py's decisions: Python floor, torch build choice, pip arguments, idempotency fingerprint."""

from __future__ import annotations

import pytest

import setup_env


def test_python_floor():
    setup_env.check_python_version((3, 10, 0))
    with pytest.raises(setup_env.SetupError, match=r"\[python\].*3\.9 is too old"):
        setup_env.check_python_version((3, 9, 18))


@pytest.mark.parametrize("requested, system, gpu, expected", [
    ("auto", "Linux", True, "cuda"),
    ("auto", "Linux", False, "cpu"),
    ("auto", "Windows", True, "cuda"),
    ("auto", "Darwin", True, "cpu"),
    ("cpu", "Linux", True, "cpu"),
    ("cuda", "Linux", False, "cuda"),
])
def test_torch_variant_choice(requested, system, gpu, expected):
    assert setup_env.choose_torch_variant(requested, system=system, has_nvidia_gpu=gpu) == expected


def test_torch_variant_rejects_impossible_requests():
    with pytest.raises(setup_env.SetupError, match="macOS"):
        setup_env.choose_torch_variant("cuda", system="Darwin", has_nvidia_gpu=False)
    with pytest.raises(setup_env.SetupError, match="--device"):
        setup_env.choose_torch_variant("rocm", system="Linux", has_nvidia_gpu=False)


def _report(*packages):
    return {"install": [{"metadata": {"name": name, "version": version}} for name, version in packages]}


LOCAL_CPU_WHEEL = _report(("torch", "2.13.0+cpu"), ("filelock", "3.1"), ("sympy", "1.13"))
PYPI_CUDA_LINUX = _report(("torch", "2.13.0"), ("nvidia-cublas-cu12", "12.8"), ("triton", "3.5"))


def test_cpu_build_uses_local_wheel_when_resolution_has_no_cuda():
    assert setup_env.torch_install_args("cpu", system="Linux", dry_run_report=LOCAL_CPU_WHEEL) == ["torch==2.13.0"]
    assert setup_env.resolved_torch_version(LOCAL_CPU_WHEEL) == "2.13.0+cpu"


def test_cpu_build_never_pulls_cuda_packages():
    args = setup_env.torch_install_args("cpu", system="Linux", dry_run_report=PYPI_CUDA_LINUX)
    assert args == ["torch==2.13.0", "--index-url", setup_env.TORCH_CPU_INDEX]
    # Unknown resolution (dry run failed to parse): the CPU index is the safe choice.
    assert "--index-url" in setup_env.torch_install_args("cpu", system="Linux", dry_run_report=None)


def test_cuda_build_sources():
    assert setup_env.torch_install_args("cuda", system="Linux", dry_run_report=None) == ["torch==2.13.0"]
    assert setup_env.TORCH_CUDA_INDEX in setup_env.torch_install_args("cuda", system="Windows", dry_run_report=None)


def test_installed_torch_is_reused_only_when_build_matches():
    assert setup_env.installed_torch_matches({"version": "2.13.0+cpu", "cuda": None}, "cpu")
    assert not setup_env.installed_torch_matches({"version": "2.13.0+cpu", "cuda": None}, "cuda")
    assert setup_env.installed_torch_matches({"version": "2.13.0", "cuda": "12.8"}, "cuda")
    assert not setup_env.installed_torch_matches({"version": "2.5.1", "cuda": None}, "cpu")
    assert not setup_env.installed_torch_matches(None, "cpu")


def test_fingerprint_changes_with_dependencies_and_extras():
    base = setup_env.requirements_fingerprint("deps = ['numpy']", ())
    assert base == setup_env.requirements_fingerprint("deps = ['numpy']", ())
    assert base != setup_env.requirements_fingerprint("deps = ['numpy', 'scipy']", ())
    assert base != setup_env.requirements_fingerprint("deps = ['numpy']", ("test",))


def test_venv_python_location(tmp_path):
    assert setup_env.venv_python(tmp_path, "Linux") == tmp_path / "bin/python"
    assert setup_env.venv_python(tmp_path, "Windows") == tmp_path / "Scripts/python.exe"


def test_failed_step_is_named_with_a_fix(tmp_path):
    with pytest.raises(setup_env.SetupError) as info:
        setup_env.run("weights", ["python3", "-c", "import sys; sys.exit(3)"], "check the network", capture=True)
    assert "[weights]" in str(info.value) and "exit 3" in str(info.value) and "check the network" in str(info.value)
