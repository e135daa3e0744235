"""Batch annotation: query collection, resume, error isolation, summary CSV, the shared CLI/XML arguments."""

from __future__ import annotations

import csv
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from MedFoundationSegLib.cli import batch_cli
from MedFoundationSegLib.core import volume_files
from MedFoundationSegLib.core.progress import report
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.io import case_outputs
from MedFoundationSegLib.workflow import batch

REPO = Path(__file__).resolve().parents[1]
CLI_DIR = REPO / "MedFoundationSeg" / "MedFoundationSegBatch"


def _touch_volumes(folder: Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_collect_queries_from_folder_list_and_csv(tmp_path):
    folder = _touch_volumes(tmp_path / "in", ["b.nii.gz", "a.nrrd", "notes.txt", "c.mha"])
    assert [p.name for p in volume_files.collect_queries(folder)] == ["a.nrrd", "b.nii.gz", "c.mha"]
    listing = tmp_path / "list.txt"
    listing.write_text("# cases\nin/a.nrrd\n\nin/c.mha\n")
    assert [p.name for p in volume_files.collect_queries(listing)] == ["a.nrrd", "c.mha"]
    table = tmp_path / "cases.csv"
    table.write_text("id,path\n1,in/b.nii.gz\n2,in/a.nrrd\n")
    assert [p.name for p in volume_files.collect_queries(table)] == ["b.nii.gz", "a.nrrd"]
    table.write_text("id,path\n1,in/missing.nii.gz\n")
    with pytest.raises(volume_files.VolumeListError, match="do not exist"):
        volume_files.collect_queries(table)
    with pytest.raises(volume_files.VolumeListError, match="no volume files"):
        volume_files.collect_queries(_touch_volumes(tmp_path / "empty", ["readme.md"]))
    assert volume_files.case_name(Path("x/case01.nii.gz")) == "case01"


def _fake_process(calls, fail_on=(), fingerprint="f1"):
    """A case writer as run_case is one: the real output folder (labels, report, manifest), from a tiny volume."""
    def process(query, case_dir, *, overwrite, progress, cancelled):
        calls.append(query.name)
        if query.name in fail_on:
            raise RuntimeError(f"corrupt file {query.name}")
        structures = {"liver": {"present": True}, "spleen": {"present": False}}
        case_outputs.write_case(case_dir, Volume(np.zeros((2, 3, 4), np.int16), (1, 1, 1)),
                                np.zeros((2, 3, 4), np.uint8), {"liver": 1, "spleen": 2},
                                {"status": "ok", "structures": structures, "fingerprint": fingerprint},
                                colors={"liver": (1, 0, 0), "spleen": (0, 1, 0)}, overwrite=overwrite)
        report(progress, 1.0, "done")
        return {"structures": structures}
    return process


def test_failures_are_isolated_and_resume_skips_finished_cases(tmp_path):
    queries = volume_files.collect_queries(_touch_volumes(tmp_path / "in", ["a.nrrd", "b.nrrd", "c.nrrd"]))
    calls = []
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls, fail_on={"b.nrrd"}))
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"] and calls == ["a.nrrd", "b.nrrd", "c.nrrd"]
    assert "corrupt file b.nrrd" in outcomes[1].error
    assert "RuntimeError" in (tmp_path / "out" / "b" / "error.txt").read_text()
    assert outcomes[0].structures_found == 1 and outcomes[0].structures_absent == 1

    calls.clear()  # second run: only the failed case is retried, and now it works
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls))
    assert calls == ["b.nrrd"] and [o.status for o in outcomes] == ["skipped", "ok", "skipped"]
    assert not (tmp_path / "out" / "b" / "error.txt").exists()
    with open(tmp_path / "out" / "summary.csv", newline="") as stream:
        rows = {row["case"]: row for row in csv.DictReader(stream)}
    assert {name: row["status"] for name, row in rows.items()} == {"a": "ok", "b": "ok", "c": "ok"}

    calls.clear()
    batch.run_batch(queries, tmp_path / "out", _fake_process(calls), overwrite=True)
    assert calls == ["a.nrrd", "b.nrrd", "c.nrrd"]


def test_a_case_made_from_other_inputs_is_never_kept_silently(tmp_path):
    queries = volume_files.collect_queries(_touch_volumes(tmp_path / "in", ["a.nrrd"]))
    calls = []
    batch.run_batch(queries, tmp_path / "out", _fake_process(calls), fingerprint="f1")
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls, fingerprint="f2"), fingerprint="f2")
    assert outcomes[0].status == "failed" and "--overwrite" in outcomes[0].error and calls == ["a.nrrd"]
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls, fingerprint="f2"), fingerprint="f2",
                               overwrite=True)
    assert outcomes[0].status == "ok" and calls == ["a.nrrd", "a.nrrd"]
    assert case_outputs.case_state(tmp_path / "out" / "a", "f2") == "finished"


def test_an_interrupted_or_damaged_case_is_redone_and_foreign_files_are_never_touched(tmp_path):
    queries = volume_files.collect_queries(_touch_volumes(tmp_path / "in", ["a.nrrd", "b.nrrd"]))
    calls = []
    batch.run_batch(queries, tmp_path / "out", _fake_process(calls), fingerprint="f1")
    (tmp_path / "out" / "a" / "labels.nii.gz").write_bytes(b"half written")  # a kill between two writes
    (tmp_path / "out" / "b" / "manifest.json").unlink()
    assert case_outputs.case_state(tmp_path / "out" / "a", "f1") == "incomplete"
    calls.clear()
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls), fingerprint="f1")
    assert calls == ["a.nrrd", "b.nrrd"] and [o.status for o in outcomes] == ["ok", "ok"]
    notes = tmp_path / "out" / "a" / "my_notes.txt"
    notes.write_text("mine")
    calls.clear()
    outcomes = batch.run_batch(queries[:1], tmp_path / "out", _fake_process(calls), fingerprint="f1", overwrite=True)
    assert outcomes[0].status == "failed" and "did not write" in outcomes[0].error
    assert notes.read_text() == "mine"


def test_cancel_stops_the_batch_between_cases(tmp_path):
    queries = volume_files.collect_queries(_touch_volumes(tmp_path / "in", ["a.nrrd", "b.nrrd"]))
    calls = []
    outcomes = batch.run_batch(queries, tmp_path / "out", _fake_process(calls), cancelled=lambda: bool(calls))
    assert calls == ["a.nrrd"] and [o.status for o in outcomes] == ["ok", "cancelled"]


def test_degenerate_or_wrong_system_extreme_points_are_refused_with_a_reason(tmp_path):
    from MedFoundationSegLib.core.volume import write_volume
    from MedFoundationSegLib.localize.templates import Template, TemplateError

    image = Volume(np.zeros((20, 30, 40), np.int16), (1.0, 1.0, 2.0), (10.0, 20.0, 0.0))
    write_volume(image, tmp_path / "t.nrrd")
    corners = np.array([[12, 25, 10], [40, 25, 10], [25, 22, 10], [25, 45, 10], [25, 25, 4], [25, 25, 30]], float)
    assert Template.from_volumes("t", image, points_lps={"organ": corners}).points_lps["organ"].shape == (6, 3)
    with pytest.raises(TemplateError, match="span 0.0 mm"):
        Template.from_volumes("t", image, points_lps={"organ": np.repeat(corners[:1], 6, axis=0)})
    with pytest.raises(TemplateError, match="RAS vs LPS"):
        Template.from_volumes("t", image, points_lps={"organ": corners * [-1, -1, 1]})


@pytest.mark.parametrize("array, reason", [(np.zeros((20, 30, 40), np.int16), "everywhere"),
                                           (np.full((20, 30, 40), -1000, np.int16), "everywhere"),
                                           (np.arange(48, dtype=np.int16).reshape(3, 4, 4), "at least 8 voxels")])
def test_blank_and_tiny_volumes_are_refused_before_localization(array, reason):
    from MedFoundationSegLib.core.volume import VolumeError
    from MedFoundationSegLib.localize.engines import localize
    from MedFoundationSegLib.localize.templates import TemplateSet
    from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom

    templates = TemplateSet([template_from_phantom("t", make_phantom(1, (20, 48, 48)), ["liver"])])
    with pytest.raises(VolumeError, match=reason):
        localize(templates, Volume(array, (1, 1, 1), name="q"), "registration")


def test_negative_point_coordinates_work_on_the_command_line(tmp_path, capsys):
    from MedFoundationSegLib.cli.main import main

    status = main(["batch", "--templateVolume", str(tmp_path / "missing.nrrd"), "--extremePoints", "-10,-20,30",
                   "--outputFolder", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "expected one argument" not in err and "6 --extremePoints" in err


def test_negative_point_coordinates_survive_slicer_style_argv():
    argv = ["--templateVolume", "t.nrrd", "--outputFolder", "out"]
    for point in ("-10.5,-20,30", "4,-5,-6", "-1,-2,-3", "7,8,9", "-0,1,2", "3,-4e1,5"):
        argv += ["--extremePoints", point]
    args = batch_cli.parse(argv)
    assert args.extremePoints[0] == (-10.5, -20.0, 30.0) and args.extremePoints[5] == (3.0, -40.0, 5.0)
    assert len(args.extremePoints) == 6
    with pytest.raises(SystemExit):
        batch_cli.parse(["--outputFolder", "o", "--extremePoints", "1,2"])


def test_xml_descriptor_matches_the_parser():
    root = ET.parse(CLI_DIR / "MedFoundationSegBatch.xml").getroot()
    assert root.tag == "executable" and root.findtext("category") == "Segmentation"
    options = {s for action in batch_cli.build_parser()._actions for s in action.option_strings}
    parser_choices = {action.dest: action.choices for action in batch_cli.build_parser()._actions}
    names = []
    for group in root.findall("parameters"):
        for parameter in group:
            if parameter.tag in ("label", "description"):
                continue
            name, longflag = parameter.findtext("name"), parameter.findtext("longflag")
            names.append(name)
            assert longflag == name and f"--{longflag}" in options, name
            elements = [e.text for e in parameter.findall("element")]
            if elements and parser_choices.get(name):
                assert set(elements) <= set(parser_choices[name]), name
            if parameter.tag == "point":
                assert parameter.findtext("default") is None  # a default breaks multiple points (ctk-cli pitfall)
    assert len(names) == len(set(names))


def test_cli_script_prints_its_descriptor_for_slicer():
    result = subprocess.run([sys.executable, str(CLI_DIR / "MedFoundationSegBatch.py"), "--xml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert ET.fromstring(result.stdout).findtext("title") == "MedFoundationSeg Batch"


def test_bad_template_arguments_are_named(tmp_path):
    args = batch_cli.parse(["--outputFolder", str(tmp_path), "--extremePoints", "1,2,3"])
    from MedFoundationSegLib.localize.templates import TemplateError

    with pytest.raises(TemplateError, match="exactly 6"):
        batch_cli.template_set_from_args(args)
    args = batch_cli.parse(["--outputFolder", str(tmp_path)])
    with pytest.raises(batch.BatchError, match="no queries"):
        batch_cli.queries_from_args(args)


def test_options_are_the_cli_and_the_cli_xml():
    """One options type: each command-line field of Options is a flag of the batch command and a parameter of the
    Slicer CLI module with the same default and choices, and each method parameter of the XML is such a field."""
    import dataclasses

    from MedFoundationSegLib.workflow import options

    root = ET.parse(CLI_DIR / "MedFoundationSegBatch.xml").getroot()
    method = next(group for group in root.findall("parameters") if group.findtext("label") == "Method")
    xml = {p.findtext("longflag"): p for p in method if p.tag not in ("label", "description")}
    fields = {f.metadata["flag"]: f for f in options.command_line_fields()}
    assert set(xml) == set(fields)
    for flag, field in fields.items():
        parameter = xml[flag]
        default = parameter.findtext("default")
        assert type(field.default)(default) == field.default, flag
        if field.metadata["choices"]:
            assert [e.text for e in parameter.findall("element")] == list(field.metadata["choices"]), flag
    args = batch_cli.parse(["--outputFolder", "o", "--boxPadding", "2.5", "--mode", "every_k", "--overlapPolicy",
                            "order", "--axis", "coronal"])
    parsed = options.from_arguments(args)
    assert dataclasses.asdict(parsed) == dataclasses.asdict(options.Options(padding_mm=2.5, mode="every_k",
                                                                            overlap_policy="order", axis="coronal"))
    with pytest.raises(SystemExit):
        batch_cli.parse(["--outputFolder", "o", "--mode", "sideways"])


def test_demo_never_writes_into_a_folder_of_someone_elses_files(tmp_path, capsys):
    from MedFoundationSegLib.cli.main import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "templates.yaml").write_text("my own template set")
    for extra in ([], ["--overwrite"]):
        assert main(["demo", "--out", str(folder), *extra]) == 2
        assert "holds no earlier demo run" in capsys.readouterr().err
    assert (folder / "templates.yaml").read_text() == "my own template set"
    assert sorted(p.name for p in folder.iterdir()) == ["templates.yaml"]


def test_bad_command_lines_get_one_line_and_change_no_file(tmp_path, capsys):
    """Foreseeable problems end with one line naming them and exit status 2, before any work; no file changes."""
    from MedFoundationSegLib.cli.main import main

    inputs = _touch_volumes(tmp_path / "in", ["a.nrrd"])
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("::: not a template set :::")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = ["--outputFolder", str(tmp_path / "out")]
    points = [f"--extremePoints={x},{y},{z}" for x, y, z in [(1, 2, 3)] * 5]
    cases = {
        "missing template file": ["--templates", str(tmp_path / "nope.yaml"), "--queries", str(inputs), *out],
        "garbage template file": ["--templates", str(garbage), "--queries", str(inputs), *out],
        "five points": ["--templateVolume", str(inputs / "a.nrrd"), *points, "--queries", str(inputs), *out],
        "no template": ["--queries", str(inputs), *out],
        "empty query folder": ["--templates", str(garbage), "--queries", str(tmp_path / "nothing"), *out],
        "unknown model": ["--templates", str(garbage), "--queries", str(inputs), "--model", "gpt", *out],
        "NaN padding": ["--templates", str(garbage), "--queries", str(inputs), "--boxPadding", "nan", *out],
        "negative padding": ["--templates", str(garbage), "--queries", str(inputs), "--boxPadding=-50", *out],
        "output is a file": ["--templates", str(garbage), "--queries", str(inputs), "--outputFolder", str(a_file)],
    }
    for name, argv in cases.items():
        status = main(["batch", *argv])
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert err.startswith("medfoundationseg batch: ") and "\n" not in err and "Traceback" not in err, (name, err)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_stored_heads_are_read_once_for_the_template_structures_and_change_the_fingerprint(tmp_path, capsys):
    from MedFoundationSegLib.io.head_store import HeadStore
    from MedFoundationSegLib.segment.structure_head import fit_head
    from MedFoundationSegLib.workflow.case import case_fingerprint
    from MedFoundationSegLib.workflow.options import Options

    rng = np.random.default_rng(0)
    head = fit_head(rng.normal(0, 1, (40, 8)).astype(np.float32), (rng.random(40) > 0.5).astype(np.float32),
                    "litemedsam")
    HeadStore(tmp_path).save("liver", "litemedsam", head.to_arrays())
    HeadStore(tmp_path).save("liver", "mobilesam", head.to_arrays())
    templates = types.SimpleNamespace(structures=lambda: ["liver", "spleen"], templates=[])
    heads = batch_cli.stored_heads(str(tmp_path), templates, "litemedsam")
    assert list(heads) == ["liver"] and "1 of 2 structures" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="--heads"):
        batch_cli.stored_heads(str(tmp_path / "missing"), templates, "litemedsam")
    options = Options()
    assert case_fingerprint(templates, options, heads=heads) != case_fingerprint(templates, options)
    relearned = dict(heads["liver"], **{"decoder.output_upscaling.0.bias": np.ones(64, np.float32)})
    assert case_fingerprint(templates, options, heads={"liver": relearned}) != \
        case_fingerprint(templates, options, heads=heads)  # every array counts: decoder layers, shape, atlases
    assert batch_cli.parse(["--outputFolder", str(tmp_path), "--heads", str(tmp_path)]).heads == str(tmp_path)


def test_a_batch_case_starts_from_its_heads_but_builds_no_head_shape_it_would_not_store(monkeypatch):
    """A case reads stored heads and writes no head, so the engine is told not to build a head's shape and atlases."""
    from MedFoundationSegLib.core.boxes import StructureBox
    from MedFoundationSegLib.core.volume import Volume
    from MedFoundationSegLib.workflow import case
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLib.workflow.results import CaseResult

    volume = Volume(np.zeros((8, 20, 20), np.float32), (1.0, 1.0, 1.0))
    box = StructureBox("liver", np.zeros((6, 3)), np.array([[4, 4, 2], [12, 12, 5]]), None, 1.0, True, "registration")
    monkeypatch.setattr(case, "localize", lambda *args, **kwargs: {"liver": box})
    asked = []

    def segment_box(volume, box_ijk, options, **kwargs):
        asked.append(kwargs)
        mask = np.zeros(volume.shape_kji, bool)
        mask[2:6, 4:13, 4:13] = True
        return CaseResult(mask, mask.astype(np.float32), {})

    from MedFoundationSegLib.segment.structure_head import fit_head

    rng = np.random.default_rng(0)
    head = fit_head(rng.normal(0, 1, (40, 8)).astype(np.float32), (rng.random(40) > 0.5).astype(np.float32),
                    "litemedsam")
    report = case.run_case(types.SimpleNamespace(segment_box=segment_box), types.SimpleNamespace(templates=[]),
                           volume, options=Options(engine="registration"), heads={"liver": head.to_arrays()})
    assert asked[0]["prior_head"].volumes == head.volumes and asked[0]["head_shape"] is False
    assert report["options"]["head_shape"] is True  # the options the case reports are the user's
