"""SAM's ViT image encoder (ViT-B/L/H): 16 px patches, windowed + global attention with decomposed relative positions.

Layout per block: LayerNorm(eps 1e-6) -> (zero-pad to whole windows of 14, partition) -> attention with relative
position terms -> (merge, crop) -> residual -> LayerNorm -> MLP (exact GELU) -> residual. A neck of 1x1 conv,
LayerNorm2d, 3x3 conv, LayerNorm2d maps to 256 channels. Input (B, 3, 1024, 1024), output (B, 256, 64, 64).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from MedFoundationSegLib.models.common import LayerNorm2d, MLPBlock, attention


def pad_and_split_windows(x_bhwc: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, window, window, C), zero-padding bottom/right first; also the padded (H, W)."""
    b, h, w, c = x_bhwc.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x_bhwc = F.pad(x_bhwc, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x_bhwc.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def merge_windows(windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pad_and_split_windows`: (B * nWindows, window, window, C) -> (B, H, W, C), padding cropped."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) embeddings for each query/key offset along one axis.

    A learned table of another length is first resampled linearly along its length (as SAM does); key coordinates
    are stretched when query and key sizes differ.
    """
    length = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if rel_pos.shape[0] != length:
        table = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
        table = table.reshape(-1, length).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[offsets.long()]


def decomposed_relative_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                             q_hw: tuple[int, int], k_hw: tuple[int, int]) -> torch.Tensor:
    """Additive attention bias (B, qh*qw, kh*kw) = q . R_h[row offset] + q . R_w[column offset] (MViTv2 style).

    ``q`` is the *unscaled* query (B, qh*qw, C), as in SAM.
    """
    qh, qw = q_hw
    kh, kw = k_hw
    table_h = relative_position_table(qh, kh, rel_pos_h)
    table_w = relative_position_table(qw, kw, rel_pos_w)
    b, _, c = q.shape
    q_grid = q.reshape(b, qh, qw, c)
    bias_h = torch.einsum("bhwc,hkc->bhwk", q_grid, table_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", q_grid, table_w)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(b, qh * qw, kh * kw)


class RelPosAttention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid with decomposed relative position terms."""

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        bias = decomposed_relative_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = attention(q, k, v, bias)  # (B*heads, N, hd)
        out = out.reshape(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window == 0`` means global attention over the whole 64x64 grid."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid_size: tuple[int, int],
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RelPosAttention(dim, num_heads, grid_size if window == 0 else (window, window))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded_hw = pad_and_split_windows(x, self.window)
            x = merge_windows(self.attn(x), self.window, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns channels-last (B, H/16, W/16, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: (B, 3, img_size, img_size) normalised image -> (B, out_chans, 64, 64) embedding."""

    def __init__(self, *, img_size: int = 1024, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256,
                 window_size: int = 14, global_attn_indexes: tuple[int, ...] = (), norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.embedding_size = grid
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, (grid, grid),
                     norm_eps)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"SAM ViT expects (B, C, {self.img_size}, {self.img_size}) images, got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
