"""Self-supervised MedLAM training on unlabeled CT (spec/medlam.md section 5): RDR + MSS on patch pairs of one scan.

Why this shape:
- Volumes are preprocessed once with ``preprocess`` (LAS, 3 mm, HU map to [0,1]) so training sees exactly the working
  space that localization uses, whatever the input format or orientation.
- Every random choice of step ``t`` comes from generators seeded with ``(seed, t)``, so a run is reproducible and a
  resumed run continues exactly where the stopped one left off, with no RNG state to carry in the checkpoint.
- Augmentation is one batched ``grid_sample`` (affine + elastic) in torch, on the training device. The warped voxel
  positions are the sampling coordinates themselves, so no position grid has to be interpolated.
- Checkpoints keep the reference's ``.tar`` layout (epoch, state_dict with ``module.`` keys, best_loss, optimizer) plus
  step, scheduler, config and history, written with ``torch.save`` of plain containers, read with
  ``torch.load(weights_only=True)``. The final ``medlam.pth`` is a plain ``module.``-prefixed fp32 state_dict like
  the release file.
- Every random-sampling loop has a fixed retry budget (the reference's query/patch loops could spin forever).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from MedFoundationSegLib.core.progress import CancelCheck, Cancelled, ProgressCallback, report
from MedFoundationSegLib.localize.medlam.losses import choose_mss_points, mss_loss, rdr_loss, rdr_prediction_mm
from MedFoundationSegLib.localize.medlam.matching import crop_patches
from MedFoundationSegLib.localize.medlam.network import (
    FEATURE_NAMES,
    MedLAM,
    load_medlam_weights,
    pick_device,
    strip_module_prefix,
)
from MedFoundationSegLib.localize.medlam.training_data import (
    TrainError,
    _check_arrays,
    augment,
    sample_centre,
    sample_pairs,
)
from MedFoundationSegLib.localize.preprocess import WORK_SPACING_MM

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medfoundationseg-medlam-train/1"
LAST_CHECKPOINT = "checkpoint_last.tar"
BEST_CHECKPOINT = "checkpoint_best.tar"
FINAL_WEIGHTS = "medlam.pth"
HISTORY_FILE = "history.json"
# Checkpoint settings that must match to resume: they change the network or the meaning of the step counter.
RESUME_MUST_MATCH = ("base_chns", "patch_size")


@dataclasses.dataclass
class TrainConfig:
    """Defaults are the reference's (spec s.5.2-5.4); tests shrink width, patch and iterations."""

    epochs: int = 300
    iterations: int = 1000  # steps per epoch
    batch_size: int = 4
    patch_size: int = 64
    crop_pad: int = 8  # margin around each patch cut away after warping (80^3 working crop at 64^3)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    step_size: int = 10  # StepLR period in epochs
    gamma: float = 0.8
    base_chns: int = 24
    droprate: float = 0.2
    rdr_weight: float = 1.0
    mss_weight: float = 1.0
    mss_points: int = 20
    mss_temperature: float = 15.0
    mss_dis_thresh_mm: float = 3.0
    mss_point_retries: int = 20  # shared by all points of a step, as in the reference
    foreground: float = 1e-4  # an MSS point must be foreground in more than half the batch
    body_threshold: float = 0.001  # a patch centre must be body, not air
    centre_retries: int = 20
    p_intensity: float = 0.5
    p_noise: float = 0.5
    p_affine: float = 0.5
    p_elastic: float = 0.5
    noise_std_max: float = 0.2
    affine_scale: float = 0.1
    affine_degrees: float = 15.0
    elastic_control_points: int = 5
    elastic_max_displacement_mm: float = 3.0
    val_pairs: int = 50
    seed: int = 2023
    device: str = "auto"
    spacing_mm: float = WORK_SPACING_MM
    modality: str = "auto"

    def __post_init__(self):
        for name in ("epochs", "iterations", "batch_size", "patch_size", "step_size", "base_chns", "mss_points",
                     "elastic_control_points"):
            if int(getattr(self, name)) < 1:
                raise TrainError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.patch_size % 16 or self.patch_size < 32:
            raise TrainError(f"patch_size must be a multiple of 16 (4 poolings) and at least 32 (the 1^3 bottleneck "
                             f"of a 16^3 patch cannot be instance-normalised); got {self.patch_size}")
        if self.crop_pad < 0 or self.val_pairs < 0 or self.mss_point_retries < 0 or self.centre_retries < 0:
            raise TrainError("crop_pad, val_pairs and the retry counts must not be negative")
        if not (self.lr > 0 and self.gamma > 0 and self.spacing_mm > 0):
            raise TrainError(f"lr, gamma and spacing_mm must be positive; got {self.lr}, {self.gamma}, "
                             f"{self.spacing_mm}")
        for name in ("p_intensity", "p_noise", "p_affine", "p_elastic", "droprate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise TrainError(f"{name} must lie in [0, 1]; got {getattr(self, name)!r}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    history: list[dict]  # one record per validation (epoch 0 = before training)
    steps: int
    final_weights: Path | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    seconds: float


# --- one step, validation --------------------------------------------------------------------------------------------
def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0, int(step)])


def _seed_torch(seed: int, step: int) -> None:
    """Noise and dropout of step ``step`` from a seed derived from (seed, step): resumable, no state to save."""
    torch.manual_seed(int(np.random.SeedSequence([int(seed), 1, int(step)]).generate_state(1)[0]))


def train_step(model: MedLAM, optimizer: torch.optim.Optimizer, arrays: Sequence[np.ndarray], step: int,
               cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    rng = step_rng(cfg.seed, step)
    _seed_torch(cfg.seed, step)
    b, p, pad = cfg.batch_size, cfg.patch_size, cfg.crop_pad
    batch = sample_pairs(arrays, b, rng, cfg)
    crops = torch.from_numpy(batch.crops).to(device)  # [2,B,1,W,W,W]
    o = batch.ori_offset
    ori = torch.stack([torch.stack([crops[k, i, :, o[i, 0]:o[i, 0] + p, o[i, 1]:o[i, 1] + p, o[i, 2]:o[i, 2] + p]
                                    for i in range(b)]) for k in range(2)])  # [2,B,1,P,P,P]
    target_mm = torch.as_tensor((batch.centres_zyx[0] - batch.centres_zyx[1]) * cfg.spacing_mm,
                                device=device, dtype=torch.float32)
    if cfg.mss_weight == 0:  # RDR only needs the un-augmented pair and no decoder (fast experiments)
        fc = model(ori.flatten(0, 1), out_fc=True, decoder=False, out_classification=False)["fc_position"]
        loss_rdr = rdr_loss(fc[:b], fc[b:], target_mm)
        loss_mss = torch.zeros((), device=device)
    else:
        aug, coords = augment(crops.flatten(0, 1), rng, cfg)  # independent draws for every patch
        crop_origin = torch.as_tensor(batch.centres_zyx - (p + 2 * pad) // 2, device=device, dtype=torch.float32)
        warped_zyx = coords.view(2, b, 3, p, p, p) + crop_origin[..., None, None, None]
        ori_origin = crop_origin + torch.as_tensor(o, device=device, dtype=torch.float32)[None]
        points = choose_mss_points(ori[:, :, 0], cfg.mss_points, rng, cfg)
        out = model(torch.cat([ori.flatten(0, 1), aug]), out_fc=True, out_feature=True, out_classification=False)
        fc = out["fc_position"]
        loss_rdr = rdr_loss(fc[:b], fc[b:2 * b], target_mm)
        feats = {name: out[name].view(4, b, *out[name].shape[1:]) for name in FEATURE_NAMES}
        loss_mss = mss_loss({n: f[:2] for n, f in feats.items()}, {n: f[2:] for n, f in feats.items()},
                            ori_origin, warped_zyx, points, cfg)
    loss = cfg.rdr_weight * loss_rdr + cfg.mss_weight * loss_mss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is not finite at step {step} (rdr {float(loss_rdr)}, "
                                 f"mss {float(loss_mss)}); lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "rdr": loss_rdr.item(), "mss": loss_mss.item()}


@dataclasses.dataclass
class ValidationPairs:
    patches: np.ndarray  # [2, N, 1, P, P, P] float16, un-augmented, centred on the centres
    target_mm: np.ndarray  # [N, 3] pos(patch 0) - pos(patch 1), (z,y,x) mm


def make_validation_pairs(arrays: Sequence[np.ndarray], n_pairs: int, cfg: TrainConfig) -> ValidationPairs:
    """A fixed set (seeded) of same-scan pairs, cycling over the validation volumes."""
    rng = np.random.default_rng([int(cfg.seed), 3])
    patches = np.zeros((2, n_pairs, 1) + (cfg.patch_size,) * 3, np.float16)
    target = np.zeros((n_pairs, 3))
    for n in range(n_pairs):
        array = arrays[n % len(arrays)]
        centres = np.stack([sample_centre(array, rng, cfg.body_threshold, cfg.centre_retries) for _ in range(2)])
        patches[:, n] = crop_patches(array, centres, cfg.patch_size)
        target[n] = (centres[0] - centres[1]) * cfg.spacing_mm
    return ValidationPairs(patches, target)


def validate(model: MedLAM, pairs: ValidationPairs, device: torch.device, batch_size: int = 8) -> dict[str, float]:
    """RDR on the validation pairs: mean Euclidean error (mm) and MSE (mm^2, the reference's validation loss)."""
    was_training = model.training
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, pairs.patches.shape[1], batch_size):
            chunk = torch.from_numpy(pairs.patches[:, start:start + batch_size].astype(np.float32)).to(device)
            m = chunk.shape[1]
            fc = model(chunk.flatten(0, 1), out_fc=True, decoder=False, out_classification=False)["fc_position"]
            predictions.append(rdr_prediction_mm(fc[:m], fc[m:]).cpu().double().numpy())
    model.train(was_training)
    error = np.concatenate(predictions) - pairs.target_mm
    return {"val_rdr_error_mm": float(np.linalg.norm(error, axis=1).mean()), "val_rdr_mse": float(np.mean(error ** 2))}


# --- checkpoints -----------------------------------------------------------------------------------------------------
def release_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The release layout: DataParallel ``module.`` keys, fp32, on CPU."""
    return {"module." + k: (v.detach().float() if v.is_meta else v.detach().float().cpu())
            for k, v in model.state_dict().items()}


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, optimizer, scheduler, *, epoch: int, step: int, best_loss: float,
                    cfg: TrainConfig, history: list[dict]) -> None:
    _atomic_save({"format": CHECKPOINT_FORMAT, "epoch": int(epoch), "step": int(step),
                  "state_dict": release_state_dict(model), "best_loss": float(best_loss),
                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "config": dataclasses.asdict(cfg), "history": history}, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint, refused unless it unpickles with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise TrainError(f"{path} is not a loadable weights-only checkpoint ({type(error).__name__})") from None
    missing = [k for k in ("epoch", "state_dict", "best_loss", "optimizer") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise TrainError(f"{path} is not a MedLAM training checkpoint (missing {missing})")
    return ckpt


def export_weights(checkpoint: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Training checkpoint -> release-format ``medlam.pth`` (what the reference's extract_weights.py meant to do)."""
    ckpt = load_checkpoint(checkpoint)
    state = {"module." + k: v.float() for k, v in strip_module_prefix(ckpt["state_dict"]).items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, out_path)
    return out_path


# --- the loop --------------------------------------------------------------------------------------------------------
def _configure_device(cfg: TrainConfig) -> torch.device:
    device = pick_device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("device 'cuda' was requested but CUDA is not available; use --device cpu or auto")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def build_training_model(cfg: TrainConfig, device: str | torch.device = "cpu") -> MedLAM:
    """The network as trained: the release topology at ``base_chns`` width, dropout on the bottleneck, seeded init
    (``device='meta'`` drops the values, e.g. to check key names and shapes at full width)."""
    torch.manual_seed(cfg.seed)
    model = MedLAM(base_chns=cfg.base_chns, patch_size=(cfg.patch_size,) * 3, droprate=cfg.droprate)
    return model.to(device)


def train(train_arrays: Sequence[np.ndarray], val_arrays: Sequence[np.ndarray] | None, out_dir: str | os.PathLike,
          config: TrainConfig | None = None, *, resume: str | os.PathLike | None = None,
          progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or continue training) MedLAM on preprocessed arrays (``load_work_arrays``).

    Writes ``checkpoint_last.tar`` every epoch (and when cancelled, mid-epoch), ``checkpoint_best.tar`` on a new best
    validation RDR error, ``history.json``, and at the end ``medlam.pth`` (best if validated, else last).
    Cancelling raises ``Cancelled`` after saving, so ``resume=out_dir`` continues from that step.
    """
    # size-waiver: the training loop (resume, epochs, validation, checkpoints, cancel) reads best as one sequence
    cfg = config or TrainConfig()
    arrays = _check_arrays(train_arrays, "training")
    val = _check_arrays(val_arrays, "validation") if val_arrays else []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _configure_device(cfg)
    start_time = time.perf_counter()

    model = build_training_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    step, best, history = 0, math.inf, []
    if resume is not None:
        ckpt = load_checkpoint(resume)
        saved = ckpt.get("config", {})
        clash = [f"{k}={saved[k]} (now {getattr(cfg, k)})" for k in RESUME_MUST_MATCH
                 if k in saved and saved[k] != getattr(cfg, k)]
        if clash:
            raise TrainError(f"cannot resume {resume}: the checkpoint was trained with {', '.join(clash)}")
        step = int(ckpt.get("step", int(ckpt["epoch"]) * cfg.iterations))
        if step % cfg.iterations and saved.get("iterations", cfg.iterations) != cfg.iterations:
            raise TrainError(f"cannot resume mid-epoch (step {step}) with a different --iterations "
                             f"({saved.get('iterations')} -> {cfg.iterations})")
        load_medlam_weights(model, ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        best, history = float(ckpt["best_loss"]), list(ckpt.get("history", []))
        log.info("resumed %s at step %d (epoch %d)", resume, step, step // cfg.iterations)
    model.train()

    pairs = make_validation_pairs(val, cfg.val_pairs, cfg) if val and cfg.val_pairs else None
    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT

    def record(epoch: int, losses: list[dict], seconds: float) -> dict:
        entry = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        for key in ("loss", "rdr", "mss"):
            entry[f"train_{key}"] = float(np.mean([entry_loss[key] for entry_loss in losses])) if losses else None
        if pairs is not None:
            entry.update(validate(model, pairs, device))
        history.append(entry)
        (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1), encoding="utf-8")
        if on_epoch is not None:
            on_epoch(entry)
        return entry

    if not history:
        record(0, [], 0.0)  # the untrained network: the baseline of the validation error
    total = cfg.total_steps
    losses: list[dict] = []
    epoch_start = time.perf_counter()
    while step < total:
        if cancelled is not None and cancelled():
            save_checkpoint(last_path, model, optimizer, scheduler, epoch=step // cfg.iterations, step=step,
                            best_loss=best, cfg=cfg, history=history)
            raise Cancelled(f"MedLAM training cancelled at step {step}; resume from {last_path}")
        epoch = step // cfg.iterations
        losses.append(train_step(model, optimizer, arrays, step, cfg, device))
        step += 1
        report(progress, step / total, f"epoch {epoch + 1}/{cfg.epochs} step {step % cfg.iterations or cfg.iterations}"
                                       f"/{cfg.iterations} loss {losses[-1]['loss']:.4g}")
        if step % cfg.iterations == 0:
            scheduler.step()
            entry = record(epoch + 1, losses, time.perf_counter() - epoch_start)
            losses, epoch_start = [], time.perf_counter()
            metric = entry.get("val_rdr_error_mm", entry["train_loss"])
            improved = metric < best
            best = min(best, metric)
            save_checkpoint(last_path, model, optimizer, scheduler, epoch=epoch + 1, step=step, best_loss=best,
                            cfg=cfg, history=history)
            if improved:
                save_checkpoint(best_path, model, optimizer, scheduler, epoch=epoch + 1, step=step, best_loss=best,
                                cfg=cfg, history=history)
    if not last_path.exists():  # resumed an already finished run, or zero steps: still leave a checkpoint
        save_checkpoint(last_path, model, optimizer, scheduler, epoch=step // cfg.iterations, step=step,
                        best_loss=best, cfg=cfg, history=history)
    source = best_path if (pairs is not None and best_path.exists()) else last_path
    final = export_weights(source, out_dir / FINAL_WEIGHTS)
    return TrainResult(out_dir, history, step, final, last_path, best_path if best_path.exists() else None,
                       time.perf_counter() - start_time)
