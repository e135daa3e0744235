"""MedLAM network: checkpoint layout, shapes, loading with/without the DataParallel prefix, fp32 numerics against the
stated architecture, reduced-precision modes."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from MedFoundationSegLib.localize.medlam.network import (
    FEATURE_NAMES,
    MedLAM,
    MedLAMWeightsError,
    build_medlam,
    load_medlam_weights,
    resolve_precision,
    set_precision,
)

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


def _reference_forward(model: MedLAM, x: torch.Tensor) -> dict:
    """The stated architecture (spec/medlam.md s.1.2) written out with functional ops and the model's weights:
    conv3x3x3+bias -> InstanceNorm (no affine) -> ReLU blocks, 4 max-pools, FC head with no activations on the
    C-major flattened bottleneck, trilinear x2 (align_corners False), concat [upsampled, skip]."""
    def block(name, h):
        conv = getattr(model, name).model.conv1_1.Conv
        return F.relu(F.instance_norm(F.conv3d(h, conv.weight, conv.bias, padding=1)))

    def up(h):
        return F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)

    c0 = block("conv0_2", block("conv0_1", x))
    c1 = block("conv1_2", block("conv1_1", F.max_pool3d(c0, 2)))
    c2 = block("conv2_2", block("conv2_1", F.max_pool3d(c1, 2)))
    c3 = block("conv3_2", block("conv3_1", F.max_pool3d(c2, 2)))
    c4 = block("conv4_2", block("conv4_1", F.max_pool3d(c3, 2)))
    fc = F.linear(F.linear(F.linear(c4.reshape(len(x), -1), model.fc1.weight, model.fc1.bias),
                           model.fc2.weight, model.fc2.bias), model.fc3.weight, model.fc3.bias)
    d5 = block("conv5_2", block("conv5_1", torch.cat([up(c4), c3], 1)))
    f0 = block("conv6_2", block("conv6_1", torch.cat([up(d5), c2], 1)))
    f1 = block("conv7_2", block("conv7_1", torch.cat([up(f0), c1], 1)))
    f2 = block("conv8_2", block("conv8_1", torch.cat([up(f1), c0], 1)))
    head = model.classification[0]
    return {"fc_position": fc, "feature0": f0, "feature1": f1, "feature2": f2,
            "prob": torch.sigmoid(F.conv3d(f2, head.weight, head.bias))}


ENCODER = [f"conv{i}_{j}" for i in range(5) for j in (1, 2)]


@pytest.mark.parametrize("scales", [None, ("feature0",), ("feature0", "feature1")])
def test_fp32_numerics_equal_the_stated_architecture(scales):
    """Small width (base 4, 32^3) so it runs in a second; the early-stopping decoder gives the same maps."""
    torch.manual_seed(3)
    model = MedLAM(base_chns=4, patch_size=(32, 32, 32)).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = _reference_forward(model, x)
        got = model(x, out_fc=True, out_feature=True, out_classification=scales is None, feature_scales=scales)
    assert set(got) == {"fc_position", *(scales or FEATURE_NAMES), *(["prob"] if scales is None else [])}
    for key, value in got.items():
        assert torch.allclose(value, expected[key], rtol=1e-5, atol=1e-6), key


def test_precision_modes():
    torch.manual_seed(4)
    source = MedLAM(base_chns=4, patch_size=(32, 32, 32)).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        exact = source(x, out_fc=True, out_feature=True, out_classification=False)
    fast = MedLAM(base_chns=4, patch_size=(32, 32, 32)).eval()
    fast.load_state_dict(source.state_dict())
    set_precision(fast, "bf16")
    assert fast.conv8_2.model.conv1_1.Conv.weight.dtype == torch.bfloat16
    assert all(getattr(fast, name).model.conv1_1.Conv.weight.dtype == torch.float32 for name in ENCODER)
    assert fast.fc1.weight.dtype == torch.float32 and torch.equal(fast.fc1.weight, source.fc1.weight)  # no rounding
    with torch.no_grad():
        reduced = fast(x, out_fc=True, out_feature=True, out_classification=False)
    assert torch.equal(reduced["fc_position"], exact["fc_position"])  # the RDR head is not rounded at all
    for key in FEATURE_NAMES:
        assert reduced[key].dtype == torch.bfloat16
        error = (reduced[key].float() - exact[key]).norm() / exact[key].norm()
        assert error < 0.05, (key, float(error))  # bf16 keeps 8 mantissa bits; a layout or cast bug gives ~100 %
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown MedLAM precision"):
        resolve_precision("int8", torch.device("cpu"))


def test_fp32_build_is_the_reference():
    source = MedLAM().state_dict()
    model = build_medlam(source, device="cpu", precision="fp32")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
