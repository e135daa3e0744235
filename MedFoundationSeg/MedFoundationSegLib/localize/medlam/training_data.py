"""MedLAM training data: preprocessed volumes, random patch pairs and their augmentation (see ``train``)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback, check, report
from MedFoundationSegLib.core.volume_files import collect_queries
from MedFoundationSegLib.localize.medlam.matching import crop_patches
from MedFoundationSegLib.localize.preprocess import WORK_SPACING_MM, preprocess

if TYPE_CHECKING:
    from MedFoundationSegLib.localize.medlam.train import TrainConfig


class TrainError(ValueError):
    """Bad training input or settings (named in the message)."""


# --- data ------------------------------------------------------------------------------------------------------------
def collect_volume_paths(folder: str | os.PathLike) -> list[Path]:
    """Volume files (NIfTI, NRRD, MHA...) and DICOM folders directly inside ``folder``, sorted by name."""

    folder = Path(folder)
    if not folder.is_dir():
        raise TrainError(f"training data folder not found: {folder}")
    return collect_queries(folder)


def load_work_arrays(paths: Sequence[str | os.PathLike], spacing_mm: float = WORK_SPACING_MM, modality: str = "auto",
                     progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None
                     ) -> list[np.ndarray]:
    """Read and preprocess each volume (no padding); kept as float16 (z,y,x) in [0,1] to halve the memory."""
    from MedFoundationSegLib.core.volume import read_volume

    arrays = []
    for index, path in enumerate(paths):
        check(cancelled, "loading training volumes")
        report(progress, index / max(1, len(paths)), f"preprocessing {Path(path).name}")
        work = preprocess(read_volume(path), modality, spacing_mm=spacing_mm, pad=0)
        arrays.append(work.array.astype(np.float16))
    report(progress, 1.0, f"{len(arrays)} volume(s) ready")
    return arrays


def _check_arrays(arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if not arrays:
        raise TrainError(f"no {what} volumes")
    out = []
    for n, a in enumerate(arrays):
        a = np.asarray(a)
        if a.ndim != 3 or min(a.shape) < 2:
            raise TrainError(f"{what} volume {n} has shape {a.shape}; need a 3D (z,y,x) array")
        if not np.any(a >= 0.001):
            raise TrainError(f"{what} volume {n} is all air (no value >= 0.001 after normalisation)")
        out.append(a)
    return out


def split_validation(paths: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of the volumes (at least one, leaving at least one for training)."""
    paths = list(paths)
    if fraction <= 0:
        return paths, []
    if not fraction < 1:
        raise TrainError(f"--val-fraction must lie in [0, 1); got {fraction}")
    if len(paths) < 2:
        raise TrainError("a validation split needs at least 2 volumes; give --val-folder or --val-fraction 0")
    n_val = min(len(paths) - 1, max(1, round(fraction * len(paths))))
    order = np.random.default_rng([seed, 2]).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    return [p for p in paths if p not in val], val


# --- sampling --------------------------------------------------------------------------------------------------------
def sample_centre(array: np.ndarray, rng: np.random.Generator, threshold: float, retries: int) -> np.ndarray:
    """A uniform voxel, redrawn up to ``retries`` times while it is air (bounded: the last draw is kept)."""
    shape = np.array(array.shape)
    centre = rng.integers(0, shape)
    for _ in range(retries):
        if array[tuple(centre)] >= threshold:
            break
        centre = rng.integers(0, shape)
    return centre


@dataclasses.dataclass
class PairBatch:
    """Two crops per sample from the same volume; index [k, b] = patch k (0/1) of sample b."""

    crops: np.ndarray  # [2, B, 1, W, W, W] float32, W = patch + 2 * crop_pad, zero outside the volume
    centres_zyx: np.ndarray  # [2, B, 3] volume voxel of each crop's centre (crop index W // 2)
    ori_offset: np.ndarray  # [B, 3] start of the un-augmented patch inside the crops, same for both patches


def sample_pairs(arrays: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator, cfg: TrainConfig
                 ) -> PairBatch:
    width = cfg.patch_size + 2 * cfg.crop_pad
    crops = np.zeros((2, batch_size, 1, width, width, width), np.float32)
    centres = np.zeros((2, batch_size, 3), int)
    for b in range(batch_size):
        array = arrays[int(rng.integers(len(arrays)))]  # random with replacement
        for k in range(2):
            centres[k, b] = sample_centre(array, rng, cfg.body_threshold, cfg.centre_retries)
        crops[:, b] = crop_patches(array, centres[:, b], width)
    offsets = rng.integers(0, 2 * cfg.crop_pad + 1, size=(batch_size, 3))
    return PairBatch(crops, centres, offsets)


# --- augmentation ----------------------------------------------------------------------------------------------------
def _rotation_zyx(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about the z, y and x axes (in that order), acting on (z,y,x) vectors."""
    out = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = math.cos(angle), math.sin(angle)
        others = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[np.ix_(others, others)] = [[c, -s], [s, c]]
        out = r @ out
    return out


def augment(crops: torch.Tensor, rng: np.random.Generator, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity remap, Gaussian noise, then one joint affine + elastic warp, each with its own probability.

    ``crops``: [N,1,W,W,W]. Returns the augmented central patch [N,1,P,P,P] and, for each of its voxels, the crop
    coordinate (z,y,x voxels, float) it was sampled from [N,3,P,P,P]: the position grid that follows the warp.
    Parameters come from ``rng`` (numpy), the noise from torch's generator of the crops' device.
    """
    n, width, p = crops.shape[0], crops.shape[-1], cfg.patch_size
    device = crops.device
    x = crops.clone()
    remap = rng.random(n) < cfg.p_intensity  # sum of three sigmoids with random centres (spec s.5.2 step 1)
    if remap.any():
        u = torch.tensor(rng.uniform([0.2, 0.4, 0.6], [0.4, 0.6, 0.8], size=(int(remap.sum()), 3)),
                         dtype=x.dtype, device=device)
        chosen = torch.as_tensor(np.flatnonzero(remap), device=device)
        x[chosen] = torch.sigmoid((x[chosen].unsqueeze(1) - u.view(-1, 3, 1, 1, 1, 1)) / 0.1).mean(1)
    sigma = np.where(rng.random(n) < cfg.p_noise, rng.uniform(0.0, cfg.noise_std_max, n), 0.0)
    if sigma.any():
        x = x + torch.randn(x.shape, device=device) * torch.tensor(sigma, dtype=x.dtype, device=device).view(-1, 1, 1, 1, 1)

    # Sampling coordinates of the central P^3 output voxels in the crop: centre + M (u - centre) + elastic(u).
    centre = (width - 1) / 2.0
    axis = torch.arange(cfg.crop_pad, cfg.crop_pad + p, device=device, dtype=torch.float32) - centre
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))  # [3,P,P,P] (z,y,x) offsets from centre
    matrices = np.repeat(np.eye(3)[None], n, 0)
    for i in range(n):
        if rng.random() < cfg.p_affine:
            scales = rng.uniform(1 - cfg.affine_scale, 1 + cfg.affine_scale, 3)
            angles = np.radians(rng.uniform(-cfg.affine_degrees, cfg.affine_degrees, 3))
            matrices[i] = _rotation_zyx(angles) @ np.diag(scales)
    m = torch.tensor(matrices, dtype=torch.float32, device=device)
    coords = torch.einsum("nij,jzyx->nizyx", m, grid) + centre
    elastic = rng.random(n) < cfg.p_elastic
    if elastic.any():
        k = cfg.elastic_control_points
        limit = cfg.elastic_max_displacement_mm / cfg.spacing_mm
        control = rng.uniform(-limit, limit, size=(n, 3, k, k, k)) * elastic[:, None, None, None, None]
        field = F.interpolate(torch.tensor(control, dtype=torch.float32, device=device), size=(p, p, p),
                              mode="trilinear", align_corners=True)
        coords = coords + field
    # grid_sample wants (x,y,z) order normalised to [-1,1] (align_corners=True: -1 = index 0, 1 = index W-1).
    norm = (coords.flip(1) / (width - 1) * 2 - 1).permute(0, 2, 3, 4, 1)
    warped = F.grid_sample(x, norm, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped, coords
