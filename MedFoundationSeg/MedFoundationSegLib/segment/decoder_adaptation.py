"""The mask decoder's output layers adapted to one structure, from the masks a user signed.

Why: the structure head (segment/structure_head.py) reads the 64 x 64 embedding grid, too coarse for small or
low-contrast structures such as the brain's nuclei; the decoder draws its masks at 256 x 256. A few gradient steps
on the decoder's upscaling layers and on the hypernetwork of its single-mask token, on slices of a signed mask
prompted with its box, teach the model where this structure's edge lies; the next volume's first segmentation of the
structure decodes with them (when asked for: they helped LiteMedSAM on CT and MobileSAM on brain MR, and hurt the
other two pairs; docs/benchmarks.md). The decoder's two-way transformer stays the model's own, so its output is
computed once per slice and each step costs only the small output layers. The adapted layers are plain arrays, stored
with the structure's head (io/head_store.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from MedFoundationSegLib.segment.slice_boxes import mask_box_xyxy, walk_prompt_xyxy
from MedFoundationSegLib.segment.structure_head import box_cells

ADAPTED_PREFIXES = ("output_upscaling.", "output_hypernetworks_mlps.0.")
STEPS = 30
LEARNING_RATE = 3e-3
MAX_SLICES = 6  # signed slices learned from, spread evenly over the structure
CROP_CONTEXT = 0.5  # the loss is taken within the structure's box grown by this share of its size per side


class DecoderAdaptationError(ValueError):
    """Adapted layers that do not fit this model's decoder."""


def adapted_parameters(decoder: nn.Module) -> dict[str, nn.Parameter]:
    """The decoder's parameters that adaptation changes, by name."""
    return {name: p for name, p in decoder.named_parameters() if name.startswith(ADAPTED_PREFIXES)}


def _float_copy(decoder: nn.Module) -> nn.Module:
    """A float32 copy of the model's decoder in eval mode, to adapt or to decode with adapted layers."""
    return copy.deepcopy(decoder).float().eval()


def with_layers(decoder: nn.Module, layers: dict[str, np.ndarray]) -> nn.Module:
    """A float32 copy of ``decoder`` with the adapted ``layers`` in place; layers that do not match it are refused."""
    adapted = _float_copy(decoder)
    targets = adapted_parameters(adapted)
    if set(layers) != set(targets):
        raise DecoderAdaptationError("the adapted decoder layers do not match this model's decoder")
    with torch.no_grad():
        for name, value in layers.items():
            value = np.asarray(value, np.float32)
            if value.shape != tuple(targets[name].shape) or not np.all(np.isfinite(value)):
                raise DecoderAdaptationError(f"the adapted decoder layer {name} has shape {value.shape} or is not "
                                             f"finite; the model's is {tuple(targets[name].shape)}")
            targets[name].copy_(torch.from_numpy(value))
    return adapted


def spread_slices(mask_view: np.ndarray, first: int, last: int, count: int = MAX_SLICES) -> list[int]:
    """Up to ``count`` slices of ``first..last`` where the mask is, evenly spread, ends included."""
    filled = [k for k in range(first, last + 1) if mask_view[k].any()]
    if len(filled) <= count:
        return filled
    return [filled[i] for i in np.linspace(0, len(filled) - 1, count).round().astype(int)]


def slice_prompts_xyxy(mask_hw: np.ndarray, box_xyxy) -> list[tuple[int, int, int, int]]:
    """The boxes a slice of this structure may be prompted with in a segmentation: its own tight box (a drawn box on
    the slice it was drawn on), that box grown as the box-guided walk grows the prompt it gives each slice from its
    neighbour's mask (``slice_boxes.walk_prompt_xyxy``), and the structure's whole box (``box_xyxy``: the first slice
    of a walk, and every slice in the "box" mode). Layers adapted to one kind of prompt alone fail on the others."""
    tight = mask_box_xyxy(mask_hw)
    return [tight, walk_prompt_xyxy(tight, mask_hw.shape), tuple(int(v) for v in box_xyxy)]


def _transformer_outputs(predictor, decoder: nn.Module, mask_view: np.ndarray, slices: list[int],
                         box_xyxy) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(mask tokens (P, C), image features (P, C, h, w), the slice of each) after the decoder's transformer, for
    each slice under each of its prompts (``slice_prompts_xyxy``): what the adapted layers read, the same at every
    step. Features on the whole grid: the upscaling is per cell (2 x 2 transposed convolutions, a per-pixel norm),
    so a window of them gives that window of the mask."""
    encoder = predictor.model.prompt_encoder
    device = next(decoder.parameters()).device
    tokens, features, of_slice = [], [], []
    with torch.no_grad():
        image_pe = encoder.get_dense_pe()
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])[None]
        for k in slices:
            embedding = predictor.embedding(k).to(device, torch.float32).reshape(1, encoder.embed_dim,
                                                                                 *encoder.image_embedding_size)
            for prompt in slice_prompts_xyxy(mask_view[k], box_xyxy):
                box = predictor.transform.boxes_to_input(np.asarray([prompt], np.float64))
                sparse, dense = encoder(points=None, boxes=torch.as_tensor(box, dtype=torch.float32, device=device),
                                        masks=None)
                hs, src = decoder.transformer(embedding + dense, image_pe, torch.cat([output_tokens, sparse], dim=1))
                tokens.append(hs[:, 1])
                features.append(src.transpose(1, 2).reshape(embedding.shape))
                of_slice.append(k)
    return torch.cat(tokens), torch.cat(features), of_slice


def _loss_window(transform, box_xyxy, cells: int) -> tuple[slice, slice]:
    """Rows and columns of the embedding grid the loss is taken on: the structure's box grown by CROP_CONTEXT. Far
    from the prompt the model's background needs no teaching, and the steps cost its area."""
    return box_cells(box_xyxy, transform, cells, context=CROP_CONTEXT)


def _single_mask_logits(decoder: nn.Module, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(S, 4h, 4w) logits of the single-mask output from (S, C, h, w) features, as ``MaskDecoder.predict_masks``
    computes them."""
    upscaled = decoder.output_upscaling(features)
    weights = decoder.output_hypernetworks_mlps[0](tokens)
    return torch.einsum("sc,schw->shw", weights, upscaled)


def adapt(predictor, mask_view: np.ndarray, box_xyxy, first: int, last: int, *,
          start: dict[str, np.ndarray] | None = None, steps: int = STEPS) -> dict[str, np.ndarray]:
    """The predictor's decoder layers adapted to a signed mask (``mask_view``: slices along the predictor's axis) in
    its box (``box_xyxy`` on slices ``first..last``), on up to MAX_SLICES of its slices; warm-started from ``start``
    (the layers earlier volumes taught) else from the model's own. Returns the layers as float32 arrays by name."""
    base = predictor.model.mask_decoder
    decoder = with_layers(base, start) if start else _float_copy(base)
    slices = spread_slices(mask_view, first, last)
    if not slices:
        raise ValueError("nothing to adapt the decoder to: the signed mask is empty in its box")
    tokens, features, of_slice = _transformer_outputs(predictor, decoder, mask_view, slices, box_xyxy)
    cells = features.shape[-1]
    rows, cols = _loss_window(predictor.transform, box_xyxy, cells)
    features = features[..., rows, cols]
    targets = torch.stack([torch.from_numpy(predictor.mask_to_prompt(mask_view[k]) > 0) for k in of_slice])
    targets = targets.to(features.device, torch.float32)
    up = targets.shape[-1] // cells  # the low-res mask's pixels per embedding cell
    targets = targets[:, rows.start * up:rows.stop * up, cols.start * up:cols.stop * up]
    trained = adapted_parameters(decoder)
    optimizer = torch.optim.Adam(trained.values(), lr=LEARNING_RATE)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            logits = _single_mask_logits(decoder, tokens, features)
            probability = torch.sigmoid(logits)
            overlap = (probability * targets).sum((1, 2))
            soft_dice = 1 - (2 * overlap + 1) / (probability.sum((1, 2)) + targets.sum((1, 2)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, targets) + soft_dice.mean()
            loss.backward()
            optimizer.step()
    return {name: p.detach().cpu().numpy().astype(np.float32, copy=True) for name, p in trained.items()}
