"""SAM's prompt encoder: points, boxes and a low-res mask -> sparse tokens and a dense (B, 256, 64, 64) map.

Coordinates are pixels of the model's input frame (x, y), shifted +0.5 to pixel centres, normalised by the input
size and encoded with random Fourier features (a fixed 2x128 Gaussian matrix -> [sin, cos], 256 channels). Learned
embeddings are added per role: 0 negative click, 1 positive click, 2 box top-left, 3 box bottom-right; label -1
marks padding (``not_a_point_embed`` replaces the encoding). A previous low-res logit mask (B, 1, 256, 256) is
downscaled x4 by two stride-2 convs; without one, ``no_mask_embed`` fills the dense map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from MedFoundationSegLib.models.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier positional encoding of points normalised to [0, 1]^2."""

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def encode_unit(self, coords_xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) points in [0, 1] -> (..., 2 * num_pos_feats) features."""
        projected = (2 * coords_xy - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size_hw: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid, as (C, h, w)."""
        h, w = size_hw
        matrix = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=matrix.device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=matrix.device, dtype=torch.float32) + 0.5) / w
        grid_xy = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self.encode_unit(grid_xy).permute(2, 0, 1)

    def forward_with_coords(self, coords_xy: torch.Tensor, image_size_hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) in an image of size (h, w) -> (B, N, C)."""
        h, w = image_size_hw
        unit = torch.stack([coords_xy[..., 0] / w, coords_xy[..., 1] / h], dim=-1)
        return self.encode_unit(unit.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Call as ``prompt_encoder(points=(coords, labels) | None, boxes=(B, 4) | None, masks=(B,1,256,256) | None)``."""

    def __init__(self, *, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (64, 64),
                 input_image_size: tuple[int, int] = (1024, 1024), mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, 64, 64)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords_xy: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords_xy = coords_xy + 0.5
        if pad:  # without a box, SAM appends one padding point (label -1)
            coords_xy = torch.cat([coords_xy, coords_xy.new_zeros((coords_xy.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        encoded = self.pe_layer.forward_with_coords(coords_xy, self.input_image_size)
        labels = labels[..., None]
        encoded = torch.where(labels == -1, self.not_a_point_embed.weight.to(encoded.dtype), encoded)
        encoded = torch.where(labels == 0, encoded + self.point_embeddings[0].weight, encoded)
        return torch.where(labels == 1, encoded + self.point_embeddings[1].weight, encoded)

    def _embed_boxes(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        corners = (boxes_xyxy + 0.5).reshape(-1, 2, 2)
        encoded = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_roles = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return encoded + corner_roles

    def _batch_size(self, points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
                masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sparse (B, N, C), dense (B, C, 64, 64)); points (B, N, 2) + labels (B, N); boxes (B, 4) or (B, 1, 4)."""
        device = self.point_embeddings[0].weight.device
        batch = self._batch_size(points, boxes, masks)
        sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        if points is not None:
            coords_xy, labels = points
            if coords_xy.dim() != 3 or coords_xy.shape[-1] != 2 or labels.shape != coords_xy.shape[:2]:
                raise ValueError(f"points must be coords (B, N, 2) and labels (B, N); got {tuple(coords_xy.shape)} "
                                 f"and {tuple(labels.shape)}")
            sparse = torch.cat([sparse, self._embed_points(coords_xy, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            if boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) as (x0, y0, x1, y1); got {tuple(boxes.shape)}")
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
