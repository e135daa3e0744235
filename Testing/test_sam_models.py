"""SAM-family networks: checkpoint key/shape contract, strict loading of the real checkpoints, forward shapes, and
numerics against outputs of the reference implementations.

``data/sam_reference_outputs.npz`` was produced once, at development time, by running the reference code
(segment-anything 1.0 modeling, MobileSAM's and LiteMedSAM's ``tiny_vit_sam.py``, loaded outside this repository)
on the same inputs with the same weights: the real LiteMedSAM and MobileSAM checkpoints, and a small ViT with seeded
random weights (the SAM ViT checkpoints are not available to the test machines). The real checkpoints come from the
weights cache (``medfoundationseg weights fetch litemedsam mobilesam``); without them these tests fail, naming that
command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from MedFoundationSegLib.core import weights
from MedFoundationSegLib.models import CheckpointMismatchError, ModelConfigError, build_model, model_names
from MedFoundationSegLib.models.vit import ImageEncoderViT

KEYS_DIR = Path(__file__).resolve().parent / "data"  # copies of the spec's keys/*.keys.json
REFERENCE = Path(__file__).resolve().parent / "data" / "sam_reference_outputs.npz"
SAM_FAMILY = ("litemedsam", "mobilesam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b")
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def expected_keys(name: str) -> dict[str, list[int]]:
    """The spec's keys file (MedSAM ViT-B is SAM ViT-B's network with other weights)."""
    path = KEYS_DIR / f"{'sam_vit_b' if name == 'medsam_vit_b' else name}.keys.json"
    if not path.is_file():  # a missing contract file must fail, never skip
        pytest.fail(f"keys contract file missing: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def litemedsam():
    return build_model("litemedsam", weights=weights.weights_path("litemedsam"))


@pytest.fixture(scope="module")
def mobilesam():
    return build_model("mobilesam", weights="registry")


# --- contract: state_dict keys and shapes ----------------------------------------------------------------------
@pytest.mark.parametrize("name", SAM_FAMILY)
def test_state_dict_keys_and_shapes_match_checkpoint_contract(name):
    model = build_model(name, device="meta")  # no memory even for ViT-H
    got = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    want = expected_keys(name)
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert not any("pixel_mean" in key or "pixel_std" in key for key in got)


def test_every_sam_family_registry_entry_is_buildable():
    assert set(SAM_FAMILY) <= set(model_names())
    assert "medlam" not in model_names()


def test_random_init_cpu_model_matches_contract_and_is_in_eval_mode():
    model = build_model("litemedsam")
    got = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    assert got == expected_keys("litemedsam")
    assert not model.training
    assert model.image_size == 256 and model.low_res_size == 256


# --- real checkpoints --------------------------------------------------------------------------------------------
def test_real_checkpoints_load_strictly(litemedsam, mobilesam):
    for model, name in ((litemedsam, "litemedsam"), (mobilesam, "mobilesam")):
        state = weights.load_state_dict(name)
        loaded = model.state_dict()
        assert set(state) == set(loaded)
        for key in ("mask_decoder.iou_token.weight", "image_encoder.neck.0.weight",
                    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):
            assert torch.equal(loaded[key], state[key]), key
    assert mobilesam.image_size == 1024


def test_in_memory_state_dict_is_copied_not_shared():
    source = build_model("litemedsam")
    state = source.state_dict()
    model = build_model("litemedsam", weights=state)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    with torch.no_grad():
        state[key].add_(1.0)
    assert not torch.equal(model.state_dict()[key], state[key])


def test_wrong_checkpoint_is_refused_with_the_offending_keys_and_file():
    path = weights.weights_path("mobilesam")
    with pytest.raises(CheckpointMismatchError) as error:
        build_model("litemedsam", weights=path)
    message = str(error.value)
    assert str(path) in message
    assert "image_encoder.patch_embed.seq.0.c.weight" in message  # 3x3 vs 1x1 patch embedding
    assert "image_encoder.head.weight" in message or "image_encoder.norm_head" in message  # classifier not in lite


def test_bad_names_and_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ModelConfigError, match="valid names:.*litemedsam"):
        build_model("sam_vit_x")
    with pytest.raises(ModelConfigError, match="medlam"):
        build_model("medlam")  # a registry model, but not a SAM-family network
    with pytest.raises(ValueError, match="meta"):
        build_model("litemedsam", weights="registry", device="meta")
    with pytest.raises(FileNotFoundError):
        build_model("litemedsam", weights=tmp_path / "nope.pth")
    not_a_checkpoint = tmp_path / "junk.pth"
    not_a_checkpoint.write_bytes(b"not a pickle")
    with pytest.raises(weights.WeightsError, match="junk.pth"):
        build_model("litemedsam", weights=not_a_checkpoint)


# --- forward shapes ----------------------------------------------------------------------------------------------
def test_forward_shapes_litemedsam_batch(litemedsam):
    images = torch.rand(2, 3, 256, 256)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0], [50.0, 50.0, 90.0, 100.0]])
    with torch.inference_mode():
        embeddings = litemedsam.encode(images)
        single, iou1 = litemedsam.decode(embeddings, boxes=boxes)
        multi, iou3 = litemedsam.decode(embeddings, boxes=boxes, multimask_output=True)
        shared, _ = litemedsam.decode(embeddings[:1], boxes=boxes)  # one image, two prompts
        points = (torch.tensor([[[30.0, 40.0]], [[60.0, 70.0]]]), torch.tensor([[1], [0]]))
        clicked, _ = litemedsam.decode(embeddings, points=points, boxes=boxes, masks=single)
    assert embeddings.shape == (2, 256, 64, 64)
    assert single.shape == (2, 1, 256, 256) and iou1.shape == (2, 1)
    assert multi.shape == (2, 3, 256, 256) and iou3.shape == (2, 3)
    assert shared.shape == (2, 1, 256, 256)
    assert clicked.shape == (2, 1, 256, 256)
    assert torch.isfinite(multi).all()
    with pytest.raises(ValueError, match="image embeddings"):
        litemedsam.decode(torch.cat([embeddings, embeddings[:1]]), boxes=boxes)
    with pytest.raises(ValueError, match="256"):
        litemedsam.encode(torch.rand(1, 3, 128, 128))


def test_multimask_output_selects_tokens_like_sam(litemedsam):
    torch.manual_seed(0)
    embeddings = torch.randn(1, 256, 64, 64)
    box = torch.tensor([[40.0, 40.0, 160.0, 150.0]])
    sparse, dense = litemedsam.prompt_encoder(points=None, boxes=box, masks=None)
    assert sparse.shape == (1, 2, 256) and dense.shape == (1, 256, 64, 64)
    with torch.inference_mode():
        every, every_iou = litemedsam.mask_decoder.predict_masks(embeddings, litemedsam.prompt_encoder.get_dense_pe(),
                                                                sparse, dense)
        single, single_iou = litemedsam.decode(embeddings, boxes=box)
        multi, multi_iou = litemedsam.decode(embeddings, boxes=box, multimask_output=True)
    assert torch.equal(single, every[:, :1]) and torch.equal(single_iou, every_iou[:, :1])
    assert torch.equal(multi, every[:, 1:]) and torch.equal(multi_iou, every_iou[:, 1:])


def test_points_without_box_get_one_padding_token(litemedsam):
    encoder = litemedsam.prompt_encoder
    coords, labels = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]]), torch.tensor([[1, 0]])
    alone, _ = encoder(points=(coords, labels), boxes=None, masks=None)
    with_box, _ = encoder(points=(coords, labels), boxes=torch.tensor([[0.0, 0.0, 50.0, 60.0]]), masks=None)
    assert alone.shape == (1, 3, 256) and with_box.shape == (1, 4, 256)
    assert torch.equal(alone[0, 2], encoder.not_a_point_embed.weight[0])
    assert torch.equal(alone[0, :2], with_box[0, :2])


# --- numerics against the reference implementations ---------------------------------------------------------------
def _check_against_reference(model, images, scale, prefix, reference):
    boxes = torch.from_numpy(reference["box_256"] * scale)
    points = (torch.from_numpy(reference["points_256"] * scale), torch.from_numpy(reference["labels"]))
    with torch.inference_mode():
        embeddings = model.encode(images)
        np.testing.assert_allclose(embeddings[:, ::4, ::8, ::8].numpy(), reference[prefix + "embedding_sub"],
                                   atol=2e-4, rtol=0)
        for tag, prompt in (("box", {"boxes": boxes}), ("points", {"points": points}),
                            ("box_points", {"boxes": boxes, "points": points})):
            for multi in (False, True):
                key = f"{prefix}{tag}_{'multi' if multi else 'single'}"
                logits, iou = model.decode(embeddings, multimask_output=multi, **prompt)
                np.testing.assert_allclose(logits[:, :, ::8, ::8].numpy(), reference[key + "_logits_sub"],
                                           atol=2e-3, rtol=0, err_msg=key)
                np.testing.assert_allclose(iou.numpy(), reference[key + "_iou"], atol=1e-4, err_msg=key)
        previous, _ = model.decode(embeddings, boxes=boxes)
        logits, iou = model.decode(embeddings, boxes=boxes, masks=previous)
        np.testing.assert_allclose(logits[:, :, ::8, ::8].numpy(), reference[prefix + "box_mask_single_logits_sub"],
                                   atol=2e-3, rtol=0)
        np.testing.assert_allclose(iou.numpy(), reference[prefix + "box_mask_single_iou"], atol=1e-4)
    return previous


def test_litemedsam_matches_reference_and_segments_a_bright_disc(litemedsam, reference):
    image = reference["image_u8"].astype(np.float32) / 255.0
    images = torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1)
    low_res = _check_against_reference(litemedsam, images, 1.0, "lite_", reference)
    # sanity: the box around the bright disc (radius 40 at x=140, y=120) gives that disc
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 120) ** 2 + (xx - 140) ** 2 < 40 ** 2
    mask = low_res[0, 0].numpy() > 0
    dice = 2 * (mask & disc).sum() / (mask.sum() + disc.sum())
    assert dice > 0.9, dice


def test_mobilesam_matches_reference(mobilesam, reference):
    image = np.kron(reference["image_u8"].astype(np.float32), np.ones((4, 4), np.float32))
    images = (torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1) - PIXEL_MEAN) / PIXEL_STD
    low_res = _check_against_reference(mobilesam, images, 4.0, "mobile_", reference)
    assert images.shape == (1, 3, 1024, 1024) and low_res.shape == (1, 1, 256, 256)


def _seeded_state(model, seed):
    """Deterministic random weights by sorted key (the same recipe produced the reference output)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in sorted(model.state_dict().items()):
        noise = torch.randn(value.shape, generator=generator) * 0.2
        is_norm_weight = key.endswith("weight") and ("norm" in key or key.startswith(("neck.1", "neck.3")))
        state[key] = noise + 1.0 if is_norm_weight else noise
    return state


def test_small_vit_matches_reference_windows_padding_and_global_attention(reference):
    # 8x8 patch grid with windows of 3 (padded to 9) and one global block: the same code paths as ViT-B/L/H
    encoder = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0,
                              out_chans=32, window_size=3, global_attn_indexes=(1,))
    encoder.load_state_dict(_seeded_state(encoder, 7), strict=True)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        out = encoder.eval()(images)
    np.testing.assert_allclose(out.numpy(), reference["small_vit_embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["litemedsam", "mobilesam"])
def test_banded_stem_gives_the_same_embedding_and_its_halo_is_needed(name):
    """The TinyViT stem in row bands (what the CPU runtime does) computes the whole-image numbers; one row less of
    halo does not, so the halo derived from the convolutions is the smallest that works."""
    torch.manual_seed(0)
    encoder = build_model(name).image_encoder.eval()
    for module in encoder.modules():  # non-trivial BatchNorm (the init zeroes MBConv's residual branch)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    assert encoder.stem_halo_rows == 2 and encoder.stem_bands == 0
    images = torch.rand(2, 3, encoder.img_size, encoder.img_size)
    with torch.inference_mode():
        whole, whole_stem = encoder(images), encoder._stem(images)
        encoder.stem_bands = 5  # uneven bands: the last one is shorter
        banded, banded_stem = encoder(images), encoder._stem(images)
        encoder.stem_halo_rows -= 1  # the farthest row of the receptive field goes missing at each band edge
        short_stem = encoder._stem(images)
    torch.testing.assert_close(banded_stem, whole_stem, rtol=0, atol=1e-6)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-5)
    assert (short_stem - whole_stem).abs().max() > 2e-5
