"""Small layers shared by the SAM-family networks.

Attribute names (``lin1``, ``c``/``bn``, ``weight``/``bias``) are part of the checkpoint contract: they must produce
exactly the state_dict keys of the released SAM / MobileSAM / LiteMedSAM files.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (SAM's eps 1e-6), without permuting to channels-last."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        variance = centred.pow(2).mean(dim=1, keepdim=True)  # biased, as LayerNorm
        normed = centred / torch.sqrt(variance + self.eps)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (ViT blocks use GELU, the two-way transformer ReLU)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (children ``c`` and ``bn``, as TinyViT checkpoints name them)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                       bias=False))
        bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        # Eval: BatchNorm is a fixed per-channel affine map, folded into the convolution (one pass over the map
        # instead of two); same function, float rounding aside.
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v on (..., tokens, d) tensors, through PyTorch's fused kernel.

    Same function as the references' explicit matmul-softmax-matmul; only the floating-point summation order differs.
    """
    if bias is not None:
        # A stride-0 view of the full (..., Lq, Lk) shape keeps PyTorch on its fused CPU kernel; a bias that needs
        # broadcasting falls back to the slower unfused path (measured 2-4x slower for TinyViT's windows).
        bias = bias.to(q.dtype).expand(*q.shape[:-1], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
