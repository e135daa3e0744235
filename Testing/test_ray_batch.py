"""The batch on a real Ray cluster: a head and a second worker node started as separate processes on this machine
(1 CPU each, token authentication), a driver started as a user would (``medfoundationseg batch --ray ADDRESS``), a
worker process killed mid-case, the driver stopped with Ctrl-C and the run resumed. The cluster is stopped whatever
happens."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MedFoundationSegLib.core.volume import write_volume
from MedFoundationSegLib.localize.templates import Template, TemplateSet
from MedFoundationSegLib.sampledata.phantoms import make_phantom

RAY = Path(sys.executable).with_name("ray")
CASES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A one-structure template set and six phantom queries of two sizes."""
    root = tmp_path_factory.mktemp("ray_data")
    template = make_phantom(0, shape_kji=(20, 56, 56))
    write_volume(template.image, root / "t0.nii.gz")
    write_volume(template.labels, root / "t0_labels.nii.gz")
    TemplateSet([Template("t0", image_path=root / "t0.nii.gz", labels_path=root / "t0_labels.nii.gz",
                          label_ids={"kidney_left": template.label_ids["kidney_left"]})]).save(root / "T.yaml")
    (root / "q").mkdir()
    for index in range(CASES):
        query = make_phantom(index + 1, shape_kji=(20, 56, 56) if index % 2 else (24, 64, 64))
        write_volume(query.image, root / "q" / f"case{index}.nii.gz")
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start`` head + one more node, 1 CPU each, token-protected; yields (address, environment)."""
    assert RAY.exists(), f"{RAY} is missing: the test extras install Ray (python setup_env.py --test)"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    temp = tmp_path_factory.mktemp("ray_session")
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        head = subprocess.run([str(RAY), "start", "--head", "--port=0", "--include-dashboard=false",
                               f"--temp-dir={temp}", *common], env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stderr[-2000:]
        found = re.search(r"--address='([^']+)'", head.stdout + head.stderr)
        assert found, head.stdout[-2000:]
        address = found.group(1)
        node = subprocess.run([str(RAY), "start", f"--address={address}", *common], env=env, capture_output=True,
                              text=True, timeout=120)
        assert node.returncode == 0, node.stderr[-2000:]
        yield address, env
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _batch(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "MedFoundationSegLib.cli.main", "batch", f"--templates={dataset / 'T.yaml'}",
            f"--queries={dataset / 'q'}", f"--outputFolder={out}", "--refine=none", "--engine=registration",
            "--boxPadding=0", *extra]


class Driver:
    """A batch driver process whose log lines are read as they come."""

    def __init__(self, command, env):
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.process.poll() is None or self.reader.is_alive(), self.text()
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{self.text()}")

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def text(self) -> str:
        return "\n".join(self.lines[-40:])


def _worker_running_a_case(timeout: float = 300) -> int:
    """The pid of a Ray worker process busy with a case (Ray titles it ``ray::CaseWorker.run``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", r"^ray::CaseWorker\.run"], capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.1)
    raise AssertionError("no Ray worker started a case")


def _summary(out: Path) -> dict[str, str]:
    with open(out / "summary.csv", newline="") as stream:
        return {row["case"]: row["status"] for row in csv.DictReader(stream)}


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_ray_batch_survives_a_killed_worker_resumes_after_ctrl_c_and_equals_the_serial_batch(dataset, cluster,
                                                                                           tmp_path):
    address, env = cluster
    serial = subprocess.run(_batch(dataset, tmp_path / "serial"), env=env, capture_output=True, text=True,
                            timeout=600)
    assert serial.returncode == 0, serial.stderr[-2000:]

    out = tmp_path / "ray"
    command = _batch(dataset, out, f"--ray={address}", "--rayCpusPerWorker=1")
    first = Driver(command, env)
    try:
        first.wait_for(r"Ray: 2 worker\(s\)")
        busy = _worker_running_a_case()
        time.sleep(1.0)  # well inside the case
        os.kill(busy, signal.SIGKILL)
        killed = first.wait_for(r"case (\S+): worker \S+ died \(attempt 1 of 3\); retrying").group(1)
        first.wait_for(rf"case {killed}: ok on \S+ \(attempt 2")
        first.process.send_signal(signal.SIGINT)  # Ctrl-C once the retried case is done
        assert first.finish() == 130, first.text()
    finally:
        first.process.kill()
    assert first.lines[-1] == "medfoundationseg batch: interrupted", first.text()
    rows = _summary(out)
    finished = sorted(case for case, status in rows.items() if status == "ok")
    assert killed in finished and len(finished) < CASES, rows
    assert set(rows.values()) <= {"ok", "cancelled"}, rows
    manifests = {case: (out / case / "manifest.json").read_bytes() for case in finished}
    interrupted = json.loads((out / "run_report.json").read_text())
    assert interrupted["cases"][killed]["attempts"] == 2

    second = Driver(command, env)
    try:
        assert second.finish() == 0, second.text()
    finally:
        second.process.kill()
    assert f"{CASES - len(finished)} done, {len(finished)} skipped" in "\n".join(second.lines), second.text()
    assert _summary(out) == {f"case{index}": "ok" for index in range(CASES)}
    for case, manifest in manifests.items():  # finished cases were not redone
        assert (out / case / "manifest.json").read_bytes() == manifest, case
    resumed = json.loads((out / "run_report.json").read_text())
    assert resumed["cases"][killed]["attempts"] == 2 and resumed["counts"]["skipped"] == len(finished)
    assert len({record["worker"] for record in resumed["cases"].values()}) >= 2  # both nodes took cases
    for index in range(CASES):
        expected = _labels(tmp_path / "serial" / f"case{index}" / "labels.nii.gz")
        assert expected.any()
        np.testing.assert_array_equal(_labels(out / f"case{index}" / "labels.nii.gz"), expected)
