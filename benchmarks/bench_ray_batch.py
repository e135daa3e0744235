"""Cases per hour of the batch: serial (one process) against Ray with N workers on the same cases, and what Ray's
scheduling costs per case. Each run is the command a user types (`medfoundationseg batch`, then with `--ray`), into
fresh output folders; the Ray run starts its own private cluster on this machine.

    python benchmarks/bench_ray_batch.py [--cases 6] [--workers 2] [--shape 48 128 128]

Printed per run: wall seconds of the whole command (start-up and model loading included), cases per hour from that
wall time, and the mean seconds a case takes inside its worker. For Ray, the scheduling overhead per case is the time
from handing a case to a worker until its result is back, minus the time the worker spent on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from MedFoundationSegLib.core.volume import read_volume, write_volume
from MedFoundationSegLib.localize.templates import Template, TemplateSet
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision
from MedFoundationSegLib.sampledata.phantoms import make_phantom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import machine_description  # noqa: E402


def make_dataset(root: Path, cases: int, shape: tuple[int, int, int]) -> None:
    template = make_phantom(0, shape_kji=shape)
    write_volume(template.image, root / "t0.nii.gz")
    write_volume(template.labels, root / "t0_labels.nii.gz")
    ids = {name: template.label_ids[name] for name in ("liver", "kidney_left", "spleen")}
    TemplateSet([Template("t0", image_path=root / "t0.nii.gz", labels_path=root / "t0_labels.nii.gz",
                          label_ids=ids)]).save(root / "T.yaml")
    (root / "q").mkdir()
    for index in range(cases):
        write_volume(make_phantom(index + 1, shape_kji=shape).image, root / "q" / f"case{index}.nii.gz")


def run(root: Path, out: Path, *extra: str) -> float:
    command = [sys.executable, "-m", "MedFoundationSegLib.cli.main", "batch", f"--templates={root / 'T.yaml'}",
               f"--queries={root / 'q'}", f"--outputFolder={out}", "--engine=registration", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall


def case_seconds(out: Path) -> list[float]:
    with open(out / "summary.csv", newline="") as stream:
        return [float(row["seconds"]) for row in csv.DictReader(stream)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    per_worker = max(1, cpus // args.workers)
    print(f"Machine: {machine_description()}; encoder precision {resolve_precision('auto', torch.device('cpu'))}")
    print(f"{args.cases} phantom cases {tuple(args.shape)}, 3 structures each (liver, left kidney, spleen), "
          f"registration localizer, graph-cut refinement")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_dataset(root, args.cases, tuple(args.shape))
        serial_wall = run(root, root / "serial")
        ray_wall = run(root, root / "ray", "--ray", f"--rayWorkers={args.workers}",
                       f"--rayCpusPerWorker={per_worker}")
        serial_cases, ray_cases = case_seconds(root / "serial"), case_seconds(root / "ray")
        records = json.loads((root / "ray" / "run_report.json").read_text())["cases"].values()
        overhead = [record["wall_s"] - record["seconds"] for record in records]
        same = all(np.array_equal(*(read_volume(root / run_name / f"case{i}" / "labels.nii.gz").array
                                    for run_name in ("serial", "ray"))) for i in range(args.cases))
    print(f"serial: {serial_wall:6.1f} s wall, {3600 * args.cases / serial_wall:6.1f} cases/h, "
          f"{np.mean(serial_cases):.1f} s per case inside the process (torch threads: {torch.get_num_threads()})")
    print(f"ray {args.workers} workers x {per_worker} CPU: {ray_wall:6.1f} s wall, "
          f"{3600 * args.cases / ray_wall:6.1f} cases/h, {np.mean(ray_cases):.1f} s per case inside a worker")
    print(f"speed-up {serial_wall / ray_wall:.2f}x; Ray scheduling overhead per case: mean {np.mean(overhead):.3f} s, "
          f"max {np.max(overhead):.3f} s; label maps identical to serial: {same}")


if __name__ == "__main__":
    main()
