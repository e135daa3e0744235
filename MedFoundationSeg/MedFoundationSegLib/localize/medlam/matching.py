"""Patch cropping and template matching for MedLAM's multi-scale similarity (MSS) step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def crop_patches(array_zyx: np.ndarray, centres_zyx: np.ndarray, size: int = 64) -> np.ndarray:
    """[N,1,s,s,s] patches [c-s/2, c+s/2) around integer centres; zero outside the array."""
    half = size // 2
    out = np.zeros((len(centres_zyx), 1, size, size, size), np.float32)
    shape = np.array(array_zyx.shape)
    for n, centre in enumerate(np.asarray(centres_zyx, int)):
        lo = centre - half
        hi = centre + half
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(hi, shape)
        if np.any(src_hi <= src_lo):
            continue
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        out[n, 0, dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
            array_zyx[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


def correlate_fft(query_cdhw: torch.Tensor, template_ckkk: torch.Tensor, pad: int) -> torch.Tensor:
    """Channel-summed cross-correlation of one map [C,D,H,W] with one template [C,k,k,k], zero padding ``pad``.

    The same numbers as ``F.conv3d(query[None], template[None], padding=pad)[0, 0]`` (float rounding aside), but by
    FFT: the 96-channel 8^3 template over a 64^3 map is ~1.3e10 multiply-adds per point done directly, and CPU
    grouped conv3d takes minutes for one structure. The FFT size d + k is free of wrap-around.
    """
    sizes = query_cdhw.shape[1:]
    k = template_ckkk.shape[1:]
    n_fft = [d + kk for d, kk in zip(sizes, k)]
    dims = (-3, -2, -1)
    query_f = torch.fft.rfftn(query_cdhw.float(), s=n_fft, dim=dims)
    # The template is tiny: transform its non-zero rows only, axis by axis (what rfftn with s= would do, padded).
    template_f = torch.fft.rfft(template_ckkk.float(), n=n_fft[2], dim=-1)
    template_f = torch.fft.fft(template_f, n=n_fft[1], dim=-2)
    template_f = torch.fft.fft(template_f, n=n_fft[0], dim=-3)
    query_f.mul_(template_f.conj())
    circular = torch.fft.irfftn(query_f.sum(0), s=n_fft, dim=dims)
    index = [(torch.arange(d + 2 * pad - kk + 1) - pad) % n for d, kk, n in zip(sizes, k, n_fft)]
    return circular[index[0]][:, index[1]][:, :, index[2]]


DIRECT_MAX_KERNEL = 4  # per-point conv3d wins up to 4^3 templates (feature0/1); FFT wins at 8^3 (feature2, ~2x)


def match_template(query_cdhw: torch.Tensor, template_ckkk: torch.Tensor, pad: int) -> torch.Tensor:
    """Channel-summed correlation of one point's map with its template, by whichever way is faster for its size
    (bench_localize.py --components). Both equal the reference's grouped conv3d up to float rounding."""
    if template_ckkk.shape[-1] <= DIRECT_MAX_KERNEL:
        return F.conv3d(query_cdhw[None].float(), template_ckkk[None].float(), padding=pad)[0, 0]
    return correlate_fft(query_cdhw, template_ckkk, pad)


def mss_best_offsets(features: dict[str, torch.Tensor], templates: dict[str, torch.Tensor], patch: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """MSS for a batch of points: per point, the summed per-scale template similarity (each scale / k^3, brought to
    the patch grid trilinearly, plus 1) and its first maximum in C order. Returns (argmax index [P] into the
    patch^3 grid, best score [P])."""
    first = next(iter(features.values()))
    score = torch.ones(first.shape[0], 1, patch, patch, patch)
    for scale, feature in features.items():
        query = F.normalize(feature.float(), dim=1)  # [P, C, d, d, d]
        weight = templates[scale]  # [P, C, k, k, k]
        k = weight.shape[-1]
        sim = torch.stack([match_template(q, w, k // 2) for q, w in zip(query, weight)])[:, None]
        score += F.interpolate(sim / k ** 3, size=(patch,) * 3, mode="trilinear", align_corners=False)
    flat = score.reshape(len(score), -1)
    return flat.argmax(1), flat.max(1).values
