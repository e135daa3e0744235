"""Bad input, as a user gives it: through the command line and the Python API, each gets one line naming the problem,
exit status 2 (refused before any work) or 1 (the run went on and a case failed), and every file that existed before
is still there, byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from MedFoundationSegLib.cli.main import main
from MedFoundationSegLib.core import weights
from MedFoundationSegLib.core.errors import WeightsError
from MedFoundationSegLib.core.volume import Volume, VolumeError, read_volume, write_volume
from MedFoundationSegLib.localize.engines import localize
from MedFoundationSegLib.localize.templates import Template, TemplateError, TemplateSet
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow.case import run_case
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session

SHAPE = (32, 64, 64)


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Templates, a good query and a zoo of bad files; nothing here may change during the tests."""
    root = tmp_path_factory.mktemp("bad_input")
    phantom = make_phantom(0, shape_kji=SHAPE)
    image, labels = phantom.image, phantom.labels
    write_volume(image, root / "t0.nii.gz")
    write_volume(labels, root / "t0_labels.nii.gz")
    write_volume(image, root / "q1.nrrd")
    shifted = image.with_array(image.array)
    shifted.origin_lps_mm = tuple(np.add(image.origin_lps_mm, (100.0, 100.0, 0.0)))
    write_volume(shifted, root / "t_shifted.nrrd")
    ids = {"liver": phantom.label_ids["liver"], "spleen": phantom.label_ids["spleen"]}

    def template(name, label_ids, image_path="t0.nii.gz"):
        return Template(name, image_path=root / image_path, labels_path=root / "t0_labels.nii.gz", label_ids=label_ids)

    TemplateSet([template("t0", ids)]).save(root / "T.yaml")
    TemplateSet([template("a", {"liver": ids["liver"]}), template("b", {"spleen": ids["spleen"]})]).save(
        root / "disjoint.yaml")
    (root / "missing_image.yaml").write_text("templates: [{name: t, image: nope.nii.gz}]\n")
    (root / "garbage.yaml").write_text("::: not a template set :::")
    bad = root / "bad"
    bad.mkdir()
    nan = image.array.astype(np.float32)
    nan[10, 30, 30] = np.nan
    write_volume(image.with_array(nan), bad / "nan.nii.gz")
    write_volume(image.with_array(nan), root / "t_nan.nii.gz")
    (root / "nan_template.yaml").write_text(
        "templates: [{name: t, image: t_nan.nii.gz, labels: t0_labels.nii.gz, label_ids: {liver: %d}}]\n"
        % ids["liver"])
    inf = image.array.astype(np.float64)
    inf[0, 0, 0] = np.inf
    write_volume(image.with_array(inf), bad / "inf.nrrd")
    for name in ("trunc.nii.gz", "trunc.nii", "trunc.nrrd"):
        write_volume(image, bad / name, compress=name.endswith(".gz"))
        _truncate(bad / name)
    write_volume(image.with_array(np.zeros(SHAPE, np.int16)), bad / "zeros.nrrd")
    write_volume(image.with_array(np.full(SHAPE, 40, np.int16)), bad / "constant.nrrd")
    write_volume(Volume(np.ones((3, 4, 4), np.int16) * np.arange(4), (1, 1, 1)), bad / "tiny.nrrd")
    write_volume(Volume(image.array[:1].copy(), image.spacing_mm), bad / "single_slice.nrrd")
    (bad / "text.nrrd").write_text("hello, I am not an image")
    (bad / "empty.nii.gz").write_bytes(b"")
    (bad / "gzip_of_text.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 40))
    (root / "not_dicom").mkdir()
    (root / "not_dicom" / "readme.txt").write_text("no DICOM here")
    (root / "empty_folder").mkdir()
    (root / "list.txt").write_text(f"{root / 'q1.nrrd'}\n{root / 'gone.nrrd'}\n")
    (root / "nopath.csv").write_text("name,size\nq1,3\n")
    for sub in ("a", "b"):
        (root / "dup" / sub).mkdir(parents=True)
        write_volume(image, root / "dup" / sub / "q.nrrd")
    (root / "a_file").write_text("keep me")
    (root / "wrong.pth").write_bytes(b"not a checkpoint")
    # A finished case from other options (its manifest matches its files) and a case folder holding a user's file.
    stale = root / "out_stale" / "q1"
    stale.mkdir(parents=True)
    (stale / "report.json").write_text("{}")
    (stale / "manifest.json").write_text(json.dumps(
        {"files": {"report.json": hashlib.sha256(b"{}").hexdigest()}, "fingerprint": "made-with-other-options"}))
    (root / "out_foreign" / "q1").mkdir(parents=True)
    (root / "out_foreign" / "q1" / "notes.txt").write_text("my notes")
    return root


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


# (name, argv with {root} and {out}, exit status, a word the message must hold, environment changes)
T, Q = "--templates={root}/T.yaml", "--queryVolume={root}/q1.nrrd"
OUT = "--outputFolder={out}"
POINTS6 = [f"--extremePoints={x},{y},{z}" for x, y, z in
           [(-40, 0, 0), (40, 0, 0), (0, -30, 0), (0, 30, 0), (0, 0, -20), (0, 0, 20)]]
# Inside the shifted template when read as LPS, outside when read as RAS (the default): the hint names it.
POINTS_LPS = [f"--extremePoints={x},{y},{z}" for x, y, z in
              [(120, 150, 0), (180, 150, 0), (150, 120, 0), (150, 180, 0), (150, 150, -20), (150, 150, 20)]]
TV = "--templateVolume={root}/t0.nii.gz"
CLI_CASES = [
    ("missing template file", ["batch", "--templates={root}/nope.yaml", Q, OUT], 2, "not found", {}),
    ("garbage template file", ["batch", "--templates={root}/garbage.yaml", Q, OUT], 2, "template set", {}),
    ("template image missing", ["batch", "--templates={root}/missing_image.yaml", Q, OUT], 2, "nope.nii.gz", {}),
    ("templates share no structure", ["batch", "--templates={root}/disjoint.yaml", Q, OUT], 2, "share no", {}),
    ("template image with NaN", ["batch", "--templates={root}/nan_template.yaml", Q, OUT], 2, "nan", {}),
    ("five points", ["batch", TV, *POINTS6[:5], Q, OUT], 2, "exactly 6", {}),
    ("seven points", ["batch", TV, *POINTS6, POINTS6[0], Q, OUT], 2, "exactly 6", {}),
    ("points and templates", ["batch", T, *POINTS6, Q, OUT], 2, "either", {}),
    ("points without volume", ["batch", *POINTS6, Q, OUT], 2, "templatevolume", {}),
    ("no template", ["batch", Q, OUT], 2, "templates", {}),
    ("point outside", ["batch", TV, *POINTS6[:5], "--extremePoints=-100,-100,900", Q, OUT], 2, "outside", {}),
    ("identical points", ["batch", TV, *["--extremePoints=-100,-100,20"] * 6, Q, OUT], 2, "span", {}),
    ("points in the other system", ["batch", "--templateVolume={root}/t_shifted.nrrd", *POINTS_LPS, Q, OUT], 2,
     "other coordinate system", {}),
    ("empty query folder", ["batch", T, "--queries={root}/empty_folder", OUT], 2, "holds no volume", {}),
    ("missing query folder", ["batch", T, "--queries={root}/nowhere", OUT], 2, "not found", {}),
    ("list names a missing file", ["batch", T, "--queries={root}/list.txt", OUT], 2, "gone.nrrd", {}),
    ("csv without a path column", ["batch", T, "--queries={root}/nopath.csv", OUT], 2, "column", {}),
    ("duplicate case names", ["batch", T, "--queryVolume={root}/dup/a/q.nrrd", "--queryVolume={root}/dup/b/q.nrrd",
                              OUT], 2, "case name", {}),
    ("no queries", ["batch", T, OUT], 2, "no queries", {}),
    ("unknown model", ["batch", T, Q, OUT, "--model=gpt"], 2, "gpt", {}),
    ("device not here", ["batch", T, Q, OUT, "--device=mps"], 2, "mps", {}),
    ("NaN padding", ["batch", T, Q, OUT, "--boxPadding=nan"], 2, "padding", {}),
    ("negative padding", ["batch", T, Q, OUT, "--boxPadding=-50"], 2, "padding", {}),
    ("output is a file", ["batch", T, Q, "--outputFolder={root}/a_file"], 2, "a_file", {}),
    ("output under a file", ["batch", T, Q, "--outputFolder={root}/a_file/out"], 2, "a_file", {}),
    ("Ray cluster not answering", ["batch", T, Q, OUT, "--ray=127.0.0.1:1"], 2, "cannot reach the ray cluster", {}),
    ("weights missing", ["batch", T, Q, OUT], 2, "weights fetch", {"MEDFOUNDATIONSEG_CACHE": "{root}/no_cache"}),
    # The run starts and the case fails with its reason (exit 1); the other cases would go on.
    ("truncated gzip NIfTI query", ["batch", T, "--queryVolume={root}/bad/trunc.nii.gz", OUT], 1, "truncated", {}),
    ("truncated NIfTI query", ["batch", T, "--queryVolume={root}/bad/trunc.nii", OUT], 1, "truncated", {}),
    ("truncated NRRD query", ["batch", T, "--queryVolume={root}/bad/trunc.nrrd", OUT], 1, "cannot read", {}),
    ("NaN NIfTI query", ["batch", T, "--queryVolume={root}/bad/nan.nii.gz", OUT], 1, "nan", {}),
    ("Inf NRRD query", ["batch", T, "--queryVolume={root}/bad/inf.nrrd", OUT], 1, "infinite", {}),
    ("all-zero query", ["batch", T, "--queryVolume={root}/bad/zeros.nrrd", OUT], 1, "everywhere", {}),
    ("constant query", ["batch", T, "--queryVolume={root}/bad/constant.nrrd", OUT], 1, "everywhere", {}),
    ("tiny query", ["batch", T, "--queryVolume={root}/bad/tiny.nrrd", OUT], 1, "at least", {}),
    ("single-slice query", ["batch", T, "--queryVolume={root}/bad/single_slice.nrrd", OUT], 1, "3d", {}),
    ("text file as a query", ["batch", T, "--queryVolume={root}/bad/text.nrrd", OUT], 1, "cannot read", {}),
    ("empty file as a query", ["batch", T, "--queryVolume={root}/bad/empty.nii.gz", OUT], 1, "cannot read", {}),
    ("gzip that is no NIfTI", ["batch", T, "--queryVolume={root}/bad/gzip_of_text.nii.gz", OUT], 1, "nifti", {}),
    ("folder without DICOM", ["batch", T, "--queryVolume={root}/not_dicom", OUT], 1, "dicom", {}),
    ("finished from other options", ["batch", T, Q, "--outputFolder={root}/out_stale"], 1, "--overwrite", {}),
    ("case folder holds a user's file", ["batch", T, Q, "--outputFolder={root}/out_foreign", "--overwrite"], 1,
     "did not write", {}),
    # localize, weights, demo
    ("localize onto a folder", ["localize", T, "--query={root}/q1.nrrd", "--out={root}/empty_folder"], 2, "folder",
     {}),
    ("localize over a file", ["localize", T, "--query={root}/q1.nrrd", "--out={root}/a_file"], 2, "--overwrite", {}),
    ("localize a NaN volume", ["localize", T, "--query={root}/bad/nan.nii.gz", "--out={out}/b.json"], 2, "nan", {}),
    ("localize an unknown structure", ["localize", T, "--query={root}/q1.nrrd", "--structures", "pancreas",
                                       "--out={out}/b.json"], 2, "pancreas", {}),
    ("weights add a wrong file", ["weights", "add", "litemedsam", "{root}/wrong.pth"], 2, "wrong.pth",
     {"MEDFOUNDATIONSEG_CACHE": "{root}/no_cache"}),
    ("weights add an unknown model", ["weights", "add", "gpt", "{root}/wrong.pth"], 2, "gpt",
     {"MEDFOUNDATIONSEG_CACHE": "{root}/no_cache"}),
    ("weights fetch offline", ["weights", "fetch", "medlam"], 1, "unreachable",
     {"MEDFOUNDATIONSEG_CACHE": "{root}/no_cache", "HTTPS_PROXY": "http://127.0.0.1:9",
      "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}),
    ("demo into someone's folder", ["demo", "--out={root}/out_foreign"], 2, "no earlier demo", {}),
]


@pytest.mark.parametrize("name, argv, status, word, env", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_line_names_the_problem_and_changes_nothing(world, tmp_path, monkeypatch, capsys,
                                                              name, argv, status, word, env):
    out = tmp_path / "out"
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(root=world))
    before = _snapshot(world)
    code = main([arg.format(root=world, out=out) for arg in argv])
    captured = capsys.readouterr()
    assert code == status, (captured.out, captured.err)
    assert "Traceback" not in captured.err + captured.out
    if status == 2:  # refused before any work: one line, and nothing written anywhere
        line = captured.err.strip()
        assert "\n" not in line and line.startswith(f"medfoundationseg {argv[0]}: "), line
        assert not out.exists()
    else:  # each failure is one line naming it
        line = [row for row in captured.err.strip().splitlines() if "FAILED" in row]
        assert len(line) == 1, captured.err
        line = line[0]
    assert word.lower() in line.lower(), line
    after = _snapshot(world)
    assert {p: after.get(p) for p in before} == before, "a file that existed was changed or removed"
    if status == 2:
        assert set(after) == set(before), sorted(map(str, set(after) - set(before)))


def _api_cases(root: Path):
    session = Session()
    image = read_volume(root / "q1.nrrd")
    nan = image.with_array(image.array.astype(np.float32))
    nan.array[5, 5, 5] = np.nan
    template_set = TemplateSet.load(root / "T.yaml")
    return [
        ("read a truncated gzip NIfTI", lambda: read_volume(root / "bad" / "trunc.nii.gz"), VolumeError, "truncated"),
        ("read a truncated NIfTI", lambda: read_volume(root / "bad" / "trunc.nii"), VolumeError, "truncated"),
        ("read a NIfTI with NaN", lambda: read_volume(root / "bad" / "nan.nii.gz"), VolumeError, "nan"),
        ("read a text file", lambda: read_volume(root / "bad" / "text.nrrd"), VolumeError, "cannot read"),
        ("read a missing file", lambda: read_volume(root / "nope.nrrd"), VolumeError, "not found"),
        ("segment a NaN volume", lambda: session.segment_box(nan, [[5, 5, 5], [20, 20, 10]]), VolumeError, "nan"),
        ("segment a box outside", lambda: session.segment_box(image, [[100, 100, 100], [120, 120, 120]]), ValueError,
         "outside"),
        ("segment a reversed box", lambda: session.segment_box(image, [[20, 20, 20], [5, 5, 5]]), ValueError,
         "lo <= hi"),
        ("localize in a blank volume", lambda: localize(template_set, image.with_array(np.zeros(SHAPE, np.int16)),
                                                        "registration"), VolumeError, "everywhere"),
        ("localize an unknown structure", lambda: localize(template_set, image, "registration", structures=["x"]),
         TemplateError, "missing structure"),
        ("NaN padding", lambda: Options(padding_mm=math.nan), ValueError, "padding_mm"),
        ("unknown mode", lambda: Options(mode="magic"), ValueError, "magic"),
        ("garbage template set", lambda: TemplateSet.load(root / "garbage.yaml"), TemplateError, "template set"),
        ("case into a user's folder", lambda: run_case(session, template_set, root / "nope.nrrd",
                                                       root / "out_foreign" / "q1", overwrite=True),
         FileExistsError, "did not write"),  # refused before the (missing) query is even read
        ("case from a truncated file", lambda: run_case(session, template_set, root / "bad" / "trunc.nii.gz",
                                                        root / "never_written"), VolumeError, "truncated"),
        ("add a wrong weights file", lambda: weights.add_local_file("litemedsam", root / "wrong.pth"), WeightsError,
         "wrong.pth"),
    ]


def test_the_python_api_raises_one_named_error_and_changes_nothing(world, monkeypatch):
    monkeypatch.setenv("MEDFOUNDATIONSEG_CACHE", str(world / "no_cache"))
    cases = _api_cases(world)
    assert len(cases) + len(CLI_CASES) >= 40
    before = _snapshot(world)
    for name, call, error_type, word in cases:
        with pytest.raises(error_type) as caught:
            call()
        message = str(caught.value.args[0] if isinstance(caught.value, KeyError) else caught.value)
        assert "\n" not in message and word.lower() in message.lower(), (name, message)
    after = _snapshot(world)
    assert after == before
    assert not (world / "never_written").exists()


def test_ctrl_c_stops_the_batch_writes_the_summary_and_exits_130(world, tmp_path):
    """A real Ctrl-C (SIGINT) to a running batch, as soon as its first case is finished: the case it lands in is
    recorded as cancelled, without a manifest, and no later case starts. (Six cases, so that the batch is still
    running however fast a case is.)"""
    import csv
    import signal
    import subprocess
    import sys
    import time

    queries = tmp_path / "queries"
    queries.mkdir()
    names = [f"case{n}" for n in range(1, 7)]
    for name in names:
        (queries / f"{name}.nrrd").write_bytes((world / "q1.nrrd").read_bytes())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "MedFoundationSegLib.cli.main", "batch", f"--templates={world}/T.yaml",
               f"--queries={queries}", f"--outputFolder={out}", "--refine=none", "--engine=registration"]
    # A terminal's foreground command takes Ctrl-C; a test run started in the background inherits SIGINT ignored.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (out / "case1" / "manifest.json").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the first case did not finish in 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "medfoundationseg batch: interrupted"
    with open(out / "summary.csv", newline="") as stream:
        rows = {row["case"]: row["status"] for row in csv.DictReader(stream)}
    statuses = [rows.get(name) for name in names]
    cancelled = statuses.index("cancelled")  # the case the Ctrl-C landed in
    assert cancelled >= 1 and statuses[:cancelled] == ["ok"] * cancelled, rows
    assert statuses[cancelled + 1:] == [None] * (len(names) - cancelled - 1), rows  # no later case started
    assert not (out / names[cancelled] / "manifest.json").exists()
