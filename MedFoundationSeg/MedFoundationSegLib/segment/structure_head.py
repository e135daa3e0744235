"""A structure head: logistic regression on the cached slice embeddings, learned from the masks a user signed.

Why: the SAM family sees one slice and one prompt at a time and forgets. The slice embeddings it already computed say,
cell by cell, what the tissue looks like; a linear read-out of them, fitted on the slices the user drew or corrected,
recognises the same structure on the other slices of the volume, and, kept per structure, in the next volume of the
dataset. It costs one matrix product per slice, so it can run after every click.

The head works on the embedding grid (``cells`` x ``cells``, spanning the model's padded input frame); masks go to it
as the share of each cell they cover and come back through the model's own logits-to-slice geometry.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F

from MedFoundationSegLib.segment import atlas_prior
from MedFoundationSegLib.segment.preprocessing import SliceTransform
from MedFoundationSegLib.segment.shape_prior import GRID_KJI

HEAD_FORMAT = "medfoundationseg-structure-head"
BOX_CONTEXT = 0.5  # cells are learned and predicted within the box grown by this share of its size per side
DECODER_KEY_PREFIX = "decoder."  # a head's arrays hold adapted decoder layers as "decoder.<parameter name>"


class HeadError(ValueError):
    """A head that cannot be used here (another model, embedding size or an unreadable file)."""


@dataclasses.dataclass
class StructureHead:
    """p(structure | embedding cell) = sigmoid(w . (e - mean) / scale + b), for one model's embeddings."""

    model: str
    weights: np.ndarray  # (C,) float32
    bias: float
    mean: np.ndarray  # (C,) the feature standardisation fixed by the first fit
    scale: np.ndarray  # (C,)
    volumes: int = 0  # how many volumes' masks it has learned from
    cells: int = 0  # how many labelled cells
    # The structure's shape in its box, averaged over ``shape_volumes`` signed masks (segment/shape_prior.py); None
    # for a head stored before shapes were kept or learned from corrections within a volume.
    shape: np.ndarray | None = None
    shape_volumes: int = 0
    # The latest signed volumes' images and masks around the box (segment/atlas_prior.py), (N, *atlas GRID_KJI)
    # uint8 each, and the volumes they came from ((N, SOURCE_BYTES) uint8 digests); None for a head stored before
    # atlases (sources) were kept.
    atlas_images: np.ndarray | None = None
    atlas_masks: np.ndarray | None = None
    atlas_sources: np.ndarray | None = None
    # Per atlas, the structure's intensity (mean, spread) in its volume's units (atlas_prior.appearance), (N, 2)
    # float32, NaN where unknown; None for a head stored before appearances were kept.
    atlas_appearance: np.ndarray | None = None
    # The model's decoder output layers adapted to the signed masks (segment/decoder_adaptation.py), by parameter
    # name; None for a head whose volumes were never signed as a whole (learned from corrections only).
    decoder: dict[str, np.ndarray] | None = None

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) embedding cells -> (N,) logits (the standardisation folded into the weights: one product)."""
        folded = (self.weights / self.scale).astype(np.float32)
        return np.asarray(features, np.float32) @ folded + np.float32(self.bias - float(self.mean @ folded))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` (no pickled objects)."""
        return {"format": np.array(HEAD_FORMAT), "model": np.array(self.model), "weights": self.weights,
                "bias": np.array(self.bias, np.float32), "mean": self.mean, "scale": self.scale,
                "volumes": np.array(self.volumes), "cells": np.array(self.cells)} | (
            {} if self.shape is None else {"shape": np.asarray(self.shape, np.float32),
                                           "shape_volumes": np.array(self.shape_volumes)}) | (
            {} if self.atlas_images is None else {"atlas_images": self.atlas_images,
                                                  "atlas_masks": self.atlas_masks}) | (
            {} if self.atlas_sources is None else {"atlas_sources": self.atlas_sources}) | (
            {} if self.atlas_appearance is None else {"atlas_appearance": self.atlas_appearance}) | (
            {} if self.decoder is None else as_head_arrays(self.decoder))

    @classmethod
    def from_arrays(cls, arrays) -> "StructureHead":
        if str(arrays.get("format", "")) != HEAD_FORMAT:
            raise HeadError("not a structure head file")
        weights = np.asarray(arrays["weights"], np.float32).reshape(-1)
        mean = np.asarray(arrays["mean"], np.float32).reshape(-1)
        scale = np.asarray(arrays["scale"], np.float32).reshape(-1)
        finite = all(np.all(np.isfinite(a)) for a in (weights, mean, scale, np.asarray(arrays["bias"], np.float32)))
        if not (len(weights) == len(mean) == len(scale)) or not finite or np.any(scale <= 0):
            raise HeadError("the structure head's arrays are inconsistent or not finite")
        shape, shape_volumes = _shape(arrays)
        return cls(str(arrays["model"]), weights, float(arrays["bias"]), mean, scale, int(arrays["volumes"]),
                   int(arrays["cells"]), shape, shape_volumes, *_atlases(arrays), _decoder(arrays))


def _shape(arrays) -> tuple[np.ndarray | None, int]:
    """The head's optional shape grid and its count of volumes, checked."""
    if "shape" not in arrays:
        return None, 0
    shape = np.asarray(arrays["shape"], np.float32)
    if shape.size != int(np.prod(GRID_KJI)) or not np.all(np.isfinite(shape)) or shape.min() < 0 or shape.max() > 1:
        raise HeadError(f"the structure head's shape is not a {GRID_KJI} grid of values in [0, 1]")
    volumes = int(arrays.get("shape_volumes", 1))
    return shape.reshape(GRID_KJI), max(volumes, 1)


def _atlases(arrays) -> tuple[np.ndarray | None, ...]:
    """The head's optional atlas images, masks, sources and appearances, checked: as many of each, uint8 grids of the
    atlas grid's size, digests of ``SOURCE_BYTES`` and (mean, spread) pairs, NaN or finite with a spread >= 0."""
    if "atlas_images" not in arrays:
        return None, None, None, None
    images, masks = (np.asarray(arrays.get(key, ())) for key in ("atlas_images", "atlas_masks"))
    grid = int(np.prod(atlas_prior.GRID_KJI))
    fits = images.size == masks.size and images.size % grid == 0 and 0 < images.size <= atlas_prior.MAX_ATLASES * grid
    if not fits or images.dtype != np.uint8 or masks.dtype != np.uint8:
        raise HeadError(f"the structure head's atlases are not pairs of uint8 {atlas_prior.GRID_KJI} grids (at most "
                        f"{atlas_prior.MAX_ATLASES})")
    count = images.size // grid
    sources = arrays.get("atlas_sources")
    if sources is not None:
        sources = np.asarray(sources)
        if sources.dtype != np.uint8 or sources.size != count * atlas_prior.SOURCE_BYTES:
            raise HeadError(f"the structure head's atlas sources are not {count} uint8 digests of "
                            f"{atlas_prior.SOURCE_BYTES} bytes")
        sources = sources.reshape(count, atlas_prior.SOURCE_BYTES)
    looks = arrays.get("atlas_appearance")
    if looks is not None:
        looks = np.asarray(looks, np.float32)
        known = looks.reshape(-1, 2)[~np.isnan(looks.reshape(-1, 2)).any(axis=1)] if looks.size == count * 2 else None
        if known is None or not np.all(np.isfinite(known)) or np.any(known[:, 1] < 0):
            raise HeadError(f"the structure head's atlas appearances are not {count} (mean, spread) pairs")
        looks = looks.reshape(count, 2)
    return images.reshape(-1, *atlas_prior.GRID_KJI), masks.reshape(-1, *atlas_prior.GRID_KJI), sources, looks


def as_head_arrays(layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adapted decoder layers (segment/decoder_adaptation.py) as a head's arrays."""
    return {DECODER_KEY_PREFIX + name: value for name, value in layers.items()}


def _decoder(arrays) -> dict[str, np.ndarray] | None:
    """The head's optional adapted decoder layers, checked finite (their shapes are checked against the model's
    decoder where they are used)."""
    start = len(DECODER_KEY_PREFIX)
    layers = {key[start:]: np.asarray(value, np.float32) for key, value in arrays.items()
              if key.startswith(DECODER_KEY_PREFIX)}
    if not layers:
        return None
    if not all(np.all(np.isfinite(value)) for value in layers.values()):
        raise HeadError("the structure head's adapted decoder layers are not finite")
    return layers


# --- geometry between a slice and its embedding grid ---------------------------------------------------------------
def grid_hw(transform: SliceTransform, cells: int) -> tuple[int, int]:
    """Cells of the embedding grid covered by the slice (the rest is the model's padding)."""
    return (max(1, round(transform.resized_hw[0] * cells / transform.input_size)),
            max(1, round(transform.resized_hw[1] * cells / transform.input_size)))


def mask_to_cells(mask_hw: np.ndarray, transform: SliceTransform, cells: int) -> np.ndarray:
    """The share of each embedding cell a slice mask covers, (cells, cells) float32; NaN on the padding."""
    h, w = grid_hw(transform, cells)
    share = F.interpolate(torch.from_numpy(np.asarray(mask_hw, np.float32))[None, None], size=(h, w), mode="area")
    out = np.full((cells, cells), np.nan, np.float32)
    out[:h, :w] = share[0, 0].numpy()
    return out


def box_cells(box_xyxy, transform: SliceTransform, cells: int, context: float = BOX_CONTEXT) -> tuple[slice, slice]:
    """Rows and columns of the embedding grid under a slice box grown by ``context`` of its size on each side."""
    h, w = grid_hw(transform, cells)
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    grow_x, grow_y = context * (x1 - x0 + 1), context * (y1 - y0 + 1)
    per_x, per_y = w / transform.slice_hw[1], h / transform.slice_hw[0]
    cols = slice(max(0, int(np.floor((x0 - grow_x) * per_x))), min(w, int(np.ceil((x1 + 1 + grow_x) * per_x))))
    rows = slice(max(0, int(np.floor((y0 - grow_y) * per_y))), min(h, int(np.ceil((y1 + 1 + grow_y) * per_y))))
    return rows, cols


def embedding_cells(embedding: torch.Tensor) -> np.ndarray:
    """(1, C, h, w) embedding (or a window of one) -> (h, w, C) float32."""
    return embedding[0].float().permute(1, 2, 0).numpy()


def cell_logits_to_slice(logits_cells: np.ndarray, transform: SliceTransform) -> np.ndarray:
    """(L, L) cell logits -> (H, W) slice logits, through the same geometry as the model's own masks; (S, L, L) ->
    (S, H, W) for several slices at once. Where that geometry is linear (bilinear resizes and a crop, the SAM
    models' ``via_input``), it is applied as one (H, L) and one (W, L) matrix: the model's path goes through its
    full input frame (1024 x 1024 for SAM and MobileSAM), which for a box of 50 slices costs more than the head."""
    logits = np.asarray(logits_cells, np.float32)
    if transform.postprocess == "direct_probability":
        batch = torch.from_numpy(logits.reshape(-1, 1, *logits.shape[-2:]))
        return transform.logits_to_slice(batch)[:, 0].numpy().reshape(*logits.shape[:-2], *transform.slice_hw)
    rows, cols = _resize_matrices(transform, logits.shape[-2], logits.shape[-1])
    return np.matmul(np.matmul(rows, logits), cols.T)


@functools.lru_cache(maxsize=8)
def _resize_matrices(transform: SliceTransform, cells_h: int, cells_w: int) -> tuple[np.ndarray, np.ndarray]:
    """The (H, cells_h) and (W, cells_w) matrices of ``transform.logits_to_slice`` on a linear path. A bilinear
    resize weighs rows and columns apart, so each axis is the same steps in 1D: to the input frame, crop the padding,
    to the slice."""
    def axis(cells: int, resized: int, out: int) -> np.ndarray:
        probes = torch.eye(cells)[:, None, :]  # one unit impulse per cell
        if cells != transform.input_size:
            probes = F.interpolate(probes, size=transform.input_size, mode="linear", align_corners=False)
        probes = probes[..., :resized]
        if resized != out:
            probes = F.interpolate(probes, size=out, mode="linear", align_corners=False)
        return np.ascontiguousarray(probes[:, 0, :].T.numpy(), np.float32)

    return (axis(cells_h, transform.resized_hw[0], transform.slice_hw[0]),
            axis(cells_w, transform.resized_hw[1], transform.slice_hw[1]))


# --- fitting -------------------------------------------------------------------------------------------------------
def fit_head(features: np.ndarray, targets: np.ndarray, model: str, *, weights: np.ndarray | None = None,
             prior: StructureHead | None = None, l2: float = 1e-2, prior_weight: float = 1.0,
             iterations: int = 60) -> StructureHead:
    """Weighted logistic regression of soft ``targets`` (N,) in [0, 1] on ``features`` (N, C).

    Foreground and background weigh the same in total, whatever their counts; ``weights`` (N,) say how much each
    sample counts within its class. With a ``prior`` (a head learned from
    earlier volumes) the weights are pulled towards it, the harder the more volumes it saw: what one volume shows
    adjusts the head, it does not replace it."""
    features = np.asarray(features, np.float32)
    targets = np.clip(np.asarray(targets, np.float32), 0.0, 1.0)
    if features.ndim != 2 or len(features) != len(targets) or len(targets) == 0:
        raise HeadError(f"features {features.shape} and targets {targets.shape} do not match")
    if prior is not None and len(prior.weights) != features.shape[1]:
        raise HeadError(f"the stored head has {len(prior.weights)} features; the model gives {features.shape[1]}")
    if prior is not None:
        mean, scale = prior.mean, prior.scale
    else:
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-3
    x = torch.from_numpy((features - mean) / scale)
    y = torch.from_numpy(targets)
    relative = torch.ones(len(y)) if weights is None else torch.from_numpy(np.asarray(weights, np.float32))
    if relative.shape != y.shape or not bool(torch.all(relative >= 0)):
        raise HeadError(f"weights {tuple(relative.shape)} must be (N,) and not negative")
    fg = float(relative[y > 0.5].sum())
    bg = float(relative[y <= 0.5].sum())
    sample_weight = relative * torch.where(y > 0.5, 0.5 / max(fg, 1e-6), 0.5 / max(bg, 1e-6))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    w_prior, b_prior = torch.zeros(x.shape[1]), torch.zeros(())
    pull, bias_pull = l2, 0.0
    if prior is not None:
        with torch.no_grad():
            w.copy_(torch.from_numpy(prior.weights))
            b.fill_(prior.bias)
        w_prior, b_prior = torch.from_numpy(prior.weights), torch.tensor(float(prior.bias))
        pull = bias_pull = l2 + prior_weight * l2 * prior.volumes
    optimizer = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * sample_weight).sum()
        loss = loss + 0.5 * pull * ((w - w_prior) ** 2).sum() + 0.5 * bias_pull * (b - b_prior) ** 2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return StructureHead(model, w.detach().numpy().astype(np.float32), float(b.detach()), mean.astype(np.float32),
                         scale.astype(np.float32), (prior.volumes if prior else 0), len(targets))
