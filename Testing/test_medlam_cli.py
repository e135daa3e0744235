"""`medfoundationseg localize` end to end on small phantom files (registration engine), and its clear failures."""

import json

import numpy as np
import pytest
from MedFoundationSegLib.cli.main import main
from MedFoundationSegLib.core.boxes import boxes_from_json
from MedFoundationSegLib.core.volume import write_volume
from MedFoundationSegLib.localize.templates import Template, TemplateSet
from MedFoundationSegLib.sampledata.deform import deformed_copy
from MedFoundationSegLib.sampledata.phantoms import make_phantom


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    phantom = make_phantom(0, shape_kji=(40, 80, 80))
    write_volume(phantom.image, root / "t0.nii.gz")
    write_volume(phantom.labels, root / "t0_labels.nii.gz")
    query, query_labels = deformed_copy(phantom.image, phantom.labels, seed=3, rotation_deg=6, translation_mm=10)
    write_volume(query, root / "q.nrrd")
    ids = {"liver": phantom.label_ids["liver"], "spleen": phantom.label_ids["spleen"]}
    TemplateSet([Template("t0", image_path=root / "t0.nii.gz", labels_path=root / "t0_labels.nii.gz",
                          label_ids=ids)]).save(root / "T.yaml")
    truth = Template.from_volumes("truth", query, query_labels, ids)
    return root, truth


def test_localize_registration_writes_boxes(files, capsys):
    root, truth = files
    code = main(["localize", "--templates", str(root / "T.yaml"), "--query", str(root / "q.nrrd"),
                 "--engine", "registration", "--mode", "SPL", "--out", str(root / "boxes.json")])
    assert code == 0
    data = json.loads((root / "boxes.json").read_text())
    boxes = boxes_from_json(data)
    assert set(boxes) == {"liver", "spleen"} and data["engine"] == "registration"
    assert data["query"]["shape_kji"] == [40, 80, 80]
    liver = boxes["liver"]
    true_kji = np.argwhere(truth.mask("liver"))
    true_ijk = np.stack([true_kji.min(0), true_kji.max(0)])[:, ::-1]
    assert liver.present and np.abs(liver.box_ijk - true_ijk).max() <= 6
    assert np.allclose(np.asarray(data["structures"][0]["extreme_points_ras"])[:, :2],
                       -np.asarray(data["structures"][0]["extreme_points_lps"])[:, :2])
    assert len(liver.slabs) >= 2
    assert "liver: box ijk" in capsys.readouterr().out
    assert main(["localize", "--templates", str(root / "T.yaml"), "--query", str(root / "q.nrrd"),
                 "--out", str(root / "boxes.json")]) == 2  # refuses to overwrite


def test_localize_clear_errors(files, tmp_path, capsys, monkeypatch):
    root, _ = files
    code = main(["localize", "--templates", str(root / "T.yaml"), "--query", str(root / "q.nrrd"),
                 "--structures", "pancreas", "--out", str(tmp_path / "b.json")])
    assert code == 2 and "missing structure" in capsys.readouterr().err
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    code = main(["localize", "--templates", str(root / "T.yaml"), "--query", str(tmp_path / "bad.nii.gz"),
                 "--out", str(tmp_path / "b.json")])
    assert code == 2 and "cannot read" in capsys.readouterr().err
    monkeypatch.setenv("MEDFOUNDATIONSEG_CACHE", str(tmp_path / "empty_cache"))
    code = main(["localize", "--templates", str(root / "T.yaml"), "--query", str(root / "q.nrrd"),
                 "--engine", "medlam", "--out", str(tmp_path / "b.json")])
    assert code == 2 and "medfoundationseg weights fetch medlam" in capsys.readouterr().err
