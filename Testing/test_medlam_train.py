"""Self-supervised MedLAM training on phantoms: it learns (validation RDR error in mm drops on held-out phantoms),
the full RDR + MSS step runs, a stopped run resumes exactly, checkpoints are weights-only, the release layout holds at
full width, the augmentation's position grid follows the warp, sampling loops are bounded, and the CLI works.

Small network (same topology, 4 base channels, 32^3 patches) and small phantoms so the file runs in about a minute on
a 2-core CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from MedFoundationSegLib.core.progress import Cancelled
from MedFoundationSegLib.core.volume import write_volume
from MedFoundationSegLib.localize.medlam.losses import choose_mss_points
from MedFoundationSegLib.localize.medlam.network import MedLAM, load_medlam_weights
from MedFoundationSegLib.localize.medlam.train import (
    BEST_CHECKPOINT,
    FINAL_WEIGHTS,
    LAST_CHECKPOINT,
    TrainConfig,
    build_training_model,
    load_checkpoint,
    make_validation_pairs,
    release_state_dict,
    train,
)
from MedFoundationSegLib.localize.medlam.training_data import TrainError, augment, sample_centre
from MedFoundationSegLib.localize.preprocess import preprocess
from MedFoundationSegLib.sampledata.phantoms import make_phantom

KEYS_FILE = Path("/work/shared/spec/keys/medlam.keys.json")
if not KEYS_FILE.exists():  # a checkout without the shared spec: the copy next to the tests
    KEYS_FILE = Path(__file__).with_name("data") / "medlam.keys.json"
SHAPE = (48, 96, 96)
SMALL = dict(patch_size=32, crop_pad=4, base_chns=4, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The CPU is shared: one intra-op thread is faster than two fighting with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def arrays():
    """Preprocessed (LAS, 3 mm, [0,1]) phantoms: 4 for training, 2 held-out seeds for validation."""
    work = {seed: preprocess(make_phantom(seed, SHAPE).image, pad=0).array.astype(np.float16)
            for seed in (0, 1, 2, 3, 10, 11)}
    return [work[s] for s in (0, 1, 2, 3)], [work[10], work[11]]


def test_training_lowers_validation_rdr_error(arrays, tmp_path):
    train_arrays, val_arrays = arrays
    cfg = TrainConfig(epochs=5, iterations=20, batch_size=4, lr=1e-3, mss_weight=0.0, val_pairs=16, seed=0,
                      step_size=100, **SMALL)
    result = train(train_arrays, val_arrays, tmp_path, cfg)
    errors = [h["val_rdr_error_mm"] for h in result.history]
    zero_guess = np.linalg.norm(make_validation_pairs(val_arrays, 16, cfg).target_mm, axis=1).mean()
    print("validation RDR error (mm) per epoch:", [round(e, 1) for e in errors], f"(predicting no displacement: "
          f"{zero_guess:.1f}), {result.seconds:.1f} s")
    assert [h["epoch"] for h in result.history] == list(range(6)) and result.steps == 100
    assert min(errors[1:]) == pytest.approx(load_checkpoint(tmp_path / BEST_CHECKPOINT)["best_loss"])
    assert errors[-1] <= 0.7 * errors[0], errors
    # Also better than the trivial "no displacement" answer, i.e. it learned where patches lie, not just to be quiet.
    assert errors[-1] < 0.85 * zero_guess, (errors[-1], zero_guess)


def _full_objective_config(**kw):
    return TrainConfig(epochs=2, iterations=2, batch_size=2, lr=1e-3, val_pairs=4, seed=5, mss_points=6, **SMALL,
                       **kw)


def test_full_objective_and_exact_resume(arrays, tmp_path):
    train_arrays, val_arrays = arrays
    cfg = _full_objective_config()
    straight = train(train_arrays[:2], val_arrays[:1], tmp_path / "a", cfg)
    assert straight.steps == 4
    for entry in straight.history[1:]:
        assert np.isfinite(entry["train_loss"]) and entry["train_mss"] > 0 and entry["train_rdr"] > 0

    done = []
    with pytest.raises(Cancelled):
        train(train_arrays[:2], val_arrays[:1], tmp_path / "b", cfg, progress=lambda f, m: done.append(f),
              cancelled=lambda: len(done) >= 3)
    stopped = load_checkpoint(tmp_path / "b")
    assert stopped["step"] == 3 and stopped["epoch"] == 1  # mid-epoch stop
    assert all(int(s["step"]) == 3 for s in stopped["optimizer"]["state"].values())
    resumed = train(train_arrays[:2], val_arrays[:1], tmp_path / "b", cfg, resume=tmp_path / "b")
    assert resumed.steps == 4 and [h["epoch"] for h in resumed.history] == [0, 1, 2]
    last = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert all(int(s["step"]) == 4 for s in last["optimizer"]["state"].values())
    assert last["scheduler"]["last_epoch"] == 2 and last["epoch"] == 2
    a = torch.load(tmp_path / "a" / LAST_CHECKPOINT, weights_only=True)["state_dict"]
    for key, value in last["state_dict"].items():
        assert torch.equal(value, a[key]), key  # the resumed run is the uninterrupted run, bit for bit
    assert resumed.history[-1]["val_rdr_error_mm"] == pytest.approx(straight.history[-1]["val_rdr_error_mm"])

    # The release file: plain fp32 state_dict with module. keys, strict into the same-width network.
    weights = torch.load(resumed.final_weights, weights_only=True)
    assert all(k.startswith("module.") for k in weights) and all(v.dtype == torch.float32 for v in weights.values())
    load_medlam_weights(MedLAM(base_chns=4, patch_size=(32, 32, 32)), weights)

    with pytest.raises(TrainError, match="base_chns"):
        train(train_arrays[:2], None, tmp_path / "c", TrainConfig(**{**SMALL, "base_chns": 8, "epochs": 1,
                                                                     "iterations": 1}), resume=tmp_path / "b")


def test_release_layout_at_full_width():
    """What training at the default width saves has exactly the release keys/shapes (checked on the meta device)."""
    state = release_state_dict(build_training_model(TrainConfig(), "meta"))
    expected = json.loads(KEYS_FILE.read_text())
    assert {k: list(v.shape) for k, v in state.items()} == expected
    load_medlam_weights(MedLAM().to("meta"), state)


def test_augmentation_position_grid_follows_warp():
    width, cfg = 40, TrainConfig(patch_size=32, crop_pad=4, p_intensity=0, p_noise=0, p_affine=1, p_elastic=1,
                                 affine_degrees=15, elastic_max_displacement_mm=6)
    axis = torch.arange(width, dtype=torch.float32)
    ramps = torch.stack([axis.view(-1, 1, 1).expand(width, width, width),  # value = z index, y index, x index
                         axis.view(1, -1, 1).expand(width, width, width),
                         axis.view(1, 1, -1).expand(width, width, width)])[:, None] / width
    warped, coords = augment(ramps, np.random.default_rng(0), cfg)
    assert warped.shape == (3, 1, 32, 32, 32) and coords.shape == (3, 3, 32, 32, 32)
    inside = ((coords >= 0) & (coords <= width - 1)).all(1)  # [3,32,32,32]
    for k in range(3):
        got, want = warped[k, 0][inside[k]], coords[k, k][inside[k]] / width
        assert torch.allclose(got, want, atol=1e-4)
    assert (coords[:, :, 1:] - coords[:, :, :-1]).abs().max() > 0  # really warped, not identity
    identity = TrainConfig(patch_size=32, crop_pad=4, p_intensity=0, p_noise=0, p_affine=0, p_elastic=0)
    plain, plain_coords = augment(ramps, np.random.default_rng(0), identity)
    assert torch.allclose(plain, ramps[:, :, 4:36, 4:36, 4:36], atol=1e-6) and plain_coords[0, 0, 0, 0, 0] == 4


def test_sampling_loops_are_bounded():
    air = np.zeros((20, 20, 20), np.float16)
    centre = sample_centre(air, np.random.default_rng(0), 0.001, retries=20)  # the reference would spin forever
    assert centre.shape == (3,) and (centre >= 0).all() and (centre < 20).all()
    points = choose_mss_points(torch.zeros(2, 2, 32, 32, 32), 5, np.random.default_rng(0), TrainConfig())
    assert points.shape == (2, 5, 3) and points.max() < 32
    with pytest.raises(TrainError, match="all air"):
        train([air], None, "/nonexistent-never-written", TrainConfig(**SMALL))
    with pytest.raises(TrainError, match="multiple of 16"):
        TrainConfig(patch_size=40)


def test_cli_trains_resumes_and_reports(tmp_path, capsys):
    from MedFoundationSegLib.cli.main import main

    data = tmp_path / "data"
    for seed in (20, 21, 22):
        write_volume(make_phantom(seed, (40, 64, 64)).image, data / f"case{seed}.nrrd")
    out = tmp_path / "run"
    common = [str(data), "--out", str(out), "--iterations", "2", "--batch-size", "2", "--patch-size", "32",
              "--base-channels", "4", "--val-fraction", "0.34", "--val-pairs", "4", "--device", "cpu",
              "--seed", "3", "--lr", "1e-3"]
    assert main(["medlam-train", *common, "--epochs", "1"]) == 0
    first = capsys.readouterr().out
    assert "2 training and 1 validation volume(s)" in first
    assert "epoch    1" in first and "val RDR error" in first and "train loss" in first
    assert (out / FINAL_WEIGHTS).is_file() and load_checkpoint(out)["step"] == 2
    assert main(["medlam-train", *common, "--epochs", "2", "--resume", str(out)]) == 0
    assert load_checkpoint(out)["step"] == 4 and "epoch    2" in capsys.readouterr().out
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    assert main(["medlam-train", *common, "--epochs", "1"]) == 2  # a trained folder is never trained over silently
    assert "--resume" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert main(["medlam-train", str(tmp_path / "empty"), "--out", str(tmp_path / "fresh")]) == 2
    assert "not found" in capsys.readouterr().err
