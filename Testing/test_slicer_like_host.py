"""A Slicer-like host in C (``host/slicer_like_host.c``): it keeps the GIL while its event loop idles 100 ms at a time
and calls Python only on timer ticks, as Slicer's Qt loop does. Through it, the Logic's "Segment inside box" on a CT
phantom with the real LiteMedSAM weights must finish within 1.5x of the same action driven from plain Python, when
the engine runs in its own process. The old way (torch on a worker thread inside the host) is run too, bounded, to
show that the host really starves Python threads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

HOST_DIR = Path(__file__).with_name("host")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "the Slicer-like host test needs gcc (apt-get install gcc) and the Python headers"
    folder = tmp_path_factory.mktemp("host")
    binary = folder / "slicer_like_host"
    version = sysconfig.get_config_var("VERSION")
    libdir = sysconfig.get_config_var("LIBDIR")
    built = subprocess.run([compiler, "-O1", "-o", str(binary), str(HOST_DIR / "slicer_like_host.c"),
                            f"-I{sysconfig.get_config_var('INCLUDEPY')}", f"-L{libdir}", f"-lpython{version}",
                            f"-Wl,-rpath,{libdir}", "-lm", "-ldl"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    from MedFoundationSegLib.sampledata.phantoms import make_phantom

    warm, main = make_phantom(21, (40, 160, 160)), make_phantom(22, (40, 160, 160))
    phantoms = folder / "phantoms.npz"
    np.savez(phantoms, warm_image=warm.image.array, warm_liver=warm.mask("liver"), image=main.image.array,
             liver=main.mask("liver"), spacing=np.array(main.image.spacing_mm))
    return binary, phantoms


def _run(host, mode: str, timeout_s: int) -> dict:
    binary, phantoms = host
    result = subprocess.run([str(binary), sys.executable, str(HOST_DIR), mode, "100", str(timeout_s)],
                            capture_output=True, text=True, timeout=timeout_s + 600,
                            env=dict(os.environ, HOST_PHANTOMS=str(phantoms)))
    lines = [line for line in result.stdout.splitlines() if line.startswith("HOST-RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(lines[-1][len("HOST-RESULT "):])
    print(f"\n{mode}: {figures}")
    return figures


def test_segment_in_box_through_the_engine_is_not_slowed_by_a_slicer_like_host(host):
    figures = _run(host, "engine", 600)
    assert figures["finished"], figures
    ratio = figures["host_s"] / figures["reference_s"]
    print(f"engine process: {figures['slices']} slices, {figures['host_s']:.1f} s in the host against "
          f"{figures['reference_s']:.1f} s from plain Python ({ratio:.2f}x)")
    assert ratio <= 1.5, figures


def test_the_old_in_process_worker_crawls_in_the_same_host(host):
    figures = _run(host, "inprocess", 45)
    print(f"in-process worker thread: {figures['slices']} slices, "
          f"{'' if figures['finished'] else 'unfinished after '}{figures['host_s']:.1f} s in the host against "
          f"{figures['reference_s']:.1f} s from plain Python")
    assert figures["host_s"] >= 3 * figures["reference_s"], figures  # the host starves Python threads, as Slicer does
