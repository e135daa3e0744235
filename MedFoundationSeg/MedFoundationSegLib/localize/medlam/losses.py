"""MedLAM's self-supervised losses: relative distance regression (RDR) and multi-scale similarity (MSS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from MedFoundationSegLib.localize.medlam.network import DIS_RATIO_MM

if TYPE_CHECKING:
    from MedFoundationSegLib.localize.medlam.train import TrainConfig


# --- losses ----------------------------------------------------------------------------------------------------------
def rdr_prediction_mm(fc_a: torch.Tensor, fc_b: torch.Tensor) -> torch.Tensor:
    """Predicted displacement pos(a) - pos(b) in mm, (z,y,x): [1500,600,600] * tanh(fc(a) - fc(b))."""
    return torch.tensor(DIS_RATIO_MM, device=fc_a.device, dtype=fc_a.dtype) * torch.tanh(fc_a - fc_b)


def rdr_loss(fc_a: torch.Tensor, fc_b: torch.Tensor, target_mm: torch.Tensor) -> torch.Tensor:
    """MSE in raw mm^2, as the reference (no normalisation)."""
    return F.mse_loss(rdr_prediction_mm(fc_a, fc_b), target_mm)


def choose_mss_points(ori: torch.Tensor, n_points: int, rng: np.random.Generator, cfg: TrainConfig) -> np.ndarray:
    """[2, n_points, 3] voxels of the un-augmented patches 0 and 1 where more than half the batch is foreground.

    ``ori``: [2, B, P, P, P]. One retry budget is shared by all draws, so the loop is bounded.
    """
    p = ori.shape[-1]
    half = ori.shape[1] / 2
    body = (ori >= cfg.foreground).cpu().numpy()
    retries = cfg.mss_point_retries
    out = np.zeros((2, n_points, 3), int)
    for j in range(n_points):
        for k in range(2):
            voxel = rng.integers(0, p, 3)
            while retries > 0 and body[k, :, voxel[0], voxel[1], voxel[2]].sum() <= half:
                retries -= 1
                voxel = rng.integers(0, p, 3)
            out[k, j] = voxel
    return out


def mss_loss(ori_features: dict[str, torch.Tensor], aug_features: dict[str, torch.Tensor],
             ori_origin_zyx: torch.Tensor, warped_zyx: torch.Tensor, points: np.ndarray, cfg: TrainConfig
             ) -> torch.Tensor:
    """Multi-scale similarity loss (spec s.5.3): for each point of an un-augmented patch, a softmax over the
    augmented patch's positions of ``T * cos(feature, point's feature)`` should peak where the warp put that point.

    ``*_features[name]``: [2, B, C, d, d, d]; ``ori_origin_zyx``: [2, B, 3] volume voxel of ori patch index 0;
    ``warped_zyx``: [2, B, 3, P, P, P] volume voxel each augmented voxel came from; ``points``: [2, J, 3].
    """
    p = warped_zyx.shape[-1]
    n_points = points.shape[1]
    total = warped_zyx.new_zeros(())
    for k in range(2):
        pts = torch.as_tensor(points[k], device=warped_zyx.device)  # [J,3]
        point_mm = (ori_origin_zyx[k][:, None, :] + pts[None].float()) * cfg.spacing_mm  # [B,J,3]
        warped_mm = warped_zyx[k].flatten(2).transpose(1, 2) * cfg.spacing_mm  # [B,P^3,3]
        dist = torch.cdist(point_mm, warped_mm).view(-1, n_points, p, p, p)  # [B,J,P,P,P] mm
        for name in ori_features:
            ori_f, aug_f = ori_features[name][k], aug_features[name][k]  # [B,C,d,d,d]
            d = aug_f.shape[-1]
            ds = p // d
            idx = torch.div(pts, ds, rounding_mode="floor")
            query = F.normalize(ori_f[:, :, idx[:, 0], idx[:, 1], idx[:, 2]], dim=1)  # [B,C,J]
            keys = F.normalize(aug_f.flatten(2), dim=1)  # [B,C,d^3]
            logits = cfg.mss_temperature * torch.einsum("bcj,bcn->bjn", query, keys)
            log_p = torch.log_softmax(logits, dim=-1)
            prob = log_p.exp()
            dist_s = dist if ds == 1 else F.interpolate(dist, size=(d, d, d), mode="trilinear", align_corners=False)
            dist_s = dist_s.flatten(2)
            pos = (dist_s <= ds * cfg.mss_dis_thresh_mm).float()
            neg = (dist_s >= 2 * ds * cfg.mss_dis_thresh_mm).float()
            log_not = torch.log1p(-prob.clamp(max=1 - 1e-6))
            total = total - (pos * log_p).sum() / pos.sum().clamp_min(1.0) - (neg * log_not).sum() / neg.sum().clamp_min(1.0)
    return total / (len(ori_features) * n_points)
