"""MedLAM network: checkpoint layout, shapes, loading with/without the DataParallel prefix."""

import json
from pathlib import Path

import pytest
import torch

from MedLAMLocalizeLib.network import MedLAM, MedLAMWeightsError, build_medlam, load_medlam_weights

KEYS_FILE = Path("/work/shared/spec/keys/medlam.keys.json")
if not KEYS_FILE.exists():  # a checkout without the shared spec: the copy next to the tests
    KEYS_FILE = Path(__file__).with_name("data") / "medlam.keys.json"


def test_state_dict_keys_and_shapes_match_release_layout():
    expected = json.loads(KEYS_FILE.read_text())
    got = {"module." + k: list(v.shape) for k, v in MedLAM().state_dict().items()}
    assert got == expected
    assert sum(v.numel() for v in MedLAM().state_dict().values()) == 15_067_878


def test_loads_with_and_without_module_prefix(tmp_path):
    source = MedLAM()
    plain = source.state_dict()
    prefixed = {"module." + k: v for k, v in plain.items()}
    path = tmp_path / "medlam.pth"
    torch.save(prefixed, path)
    for weights in (plain, prefixed, path):
        model = build_medlam(weights, device="cpu")
        assert torch.equal(model.fc3.weight, source.fc3.weight)
        assert model.fc3.weight.dtype == torch.float32 and not model.training


def test_wrong_checkpoint_is_a_clear_error():
    state = MedLAM().state_dict()
    del state["fc1.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(MedLAMWeightsError, match="missing key.*fc1.weight"):
        load_medlam_weights(MedLAM(), state)


def test_forward_shapes_and_feature_norm():
    torch.manual_seed(0)
    model = MedLAM().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64, 64), out_fc=True, out_feature=True, feature_norm=True)
    assert out["fc_position"].shape == (2, 3)
    assert out["feature0"].shape == (2, 96, 16, 16, 16)
    assert out["feature1"].shape == (2, 96, 32, 32, 32)
    assert out["feature2"].shape == (2, 96, 64, 64, 64)
    assert out["prob"].shape == (2, 3, 64, 64, 64)
    norms = out["feature1"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    with torch.no_grad():  # the conv path is fully convolutional for sides divisible by 16
        conv_only = model(torch.rand(1, 1, 32, 48, 32), out_feature=True, out_classification=False)
    assert conv_only["feature2"].shape == (1, 96, 32, 48, 32)
    with pytest.raises(ValueError, match="FC head needs"):
        model(torch.rand(1, 1, 32, 32, 32), out_fc=True)


def test_fc_head_matches_flatten_order():
    """fc_position must equal fc3(fc2(fc1(flatten(bottleneck)))) with no activations in between."""
    torch.manual_seed(1)
    model = MedLAM().eval()
    x = torch.rand(1, 1, 64, 64, 64)
    captured = {}
    model.conv4_2.register_forward_hook(lambda m, i, o: captured.setdefault("b", o.clone()))
    with torch.no_grad():
        fc = model(x, out_fc=True, decoder=False)["fc_position"]
        manual = model.fc3(model.fc2(model.fc1(captured["b"].reshape(1, -1))))
    assert captured["b"].shape == (1, 384, 4, 4, 4)
    assert torch.allclose(fc, manual, atol=1e-5)
